module github.com/lsmtp/lsmtp/bench/spoolcmp

go 1.26.0

require (
	github.com/lsmtp/lsmtp v0.0.0
	github.com/valyala/bytebufferpool v1.0.0
	go.etcd.io/bbolt v1.4.3
)

require golang.org/x/sys v0.50.0 // indirect

replace github.com/lsmtp/lsmtp => ../..
