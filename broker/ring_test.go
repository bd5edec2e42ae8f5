package broker

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

func TestRingFIFOAndBounds(t *testing.T) {
	r := newRing(5) // rounded up to 8
	msgs := make([]sink.Message, 9)
	for lap := 0; lap < 3; lap++ {
		for i := 0; i < 8; i++ {
			if !r.push(&msgs[i], 0) {
				t.Fatalf("lap %d: push %d refused below capacity", lap, i)
			}
		}
		if r.push(&msgs[8], 0) {
			t.Fatalf("lap %d: push accepted beyond capacity 8", lap)
		}
		if got := r.len(); got != 8 {
			t.Fatalf("len = %d, want 8", got)
		}
		for i := 0; i < 8; i++ {
			if m, _ := r.pop(); m != &msgs[i] {
				t.Fatalf("lap %d: pop %d returned %p, want %p", lap, i, m, &msgs[i])
			}
		}
		if m, _ := r.pop(); m != nil {
			t.Fatalf("pop on empty ring returned %p", m)
		}
	}
}

// TestRingConcurrent pushes from 4 producers and pops from 2 consumers and
// checks that every message comes out exactly once and, per producer, in
// order.
func TestRingConcurrent(t *testing.T) {
	const producers, perProducer = 4, 20000
	r := newRing(64)
	msgs := make([]sink.Message, producers*perProducer)
	for i := range msgs {
		msgs[i].ClientPort = i
	}
	seen := make([]atomic.Int32, len(msgs))
	var wg sync.WaitGroup
	var done atomic.Int64
	deadline := time.Now().Add(20 * time.Second)
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < perProducer; i++ {
				for !r.push(&msgs[p*perProducer+i], 0) {
					if time.Now().After(deadline) {
						return
					}
					runtime.Gosched()
				}
			}
		}(p)
	}
	var cwg sync.WaitGroup
	lastPer := make([][producers]int, 2)
	for c := 0; c < 2; c++ {
		cwg.Add(1)
		go func(c int) {
			defer cwg.Done()
			for i := range lastPer[c] {
				lastPer[c][i] = -1
			}
			for done.Load() < int64(len(msgs)) && time.Now().Before(deadline) {
				m, _ := r.pop()
				if m == nil {
					runtime.Gosched()
					continue
				}
				id := m.ClientPort
				seen[id].Add(1)
				p, i := id/perProducer, id%perProducer
				if i <= lastPer[c][p] {
					t.Errorf("consumer %d: producer %d message %d after %d", c, p, i, lastPer[c][p])
				}
				lastPer[c][p] = i
				done.Add(1)
			}
		}(c)
	}
	wg.Wait()
	cwg.Wait()
	for i := range seen {
		if n := seen[i].Load(); n != 1 {
			t.Fatalf("message %d seen %d times", i, n)
		}
	}
}

// handoff is what BenchmarkHandoff compares: a non-blocking put (false when
// full) and a blocking take for the consumers.
type handoff interface {
	put(*sink.Message) bool
	take(stop <-chan struct{}) *sink.Message
}

// ringHandoff is the ring with the wake-up the broker uses: a 1-buffered
// channel that a producer signals without blocking after each push.
type ringHandoff struct {
	r    *ring
	wake chan struct{}
}

func (h *ringHandoff) put(m *sink.Message) bool {
	if !h.r.push(m, 0) {
		return false
	}
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return true
}

func (h *ringHandoff) take(stop <-chan struct{}) *sink.Message {
	for {
		if m, _ := h.r.pop(); m != nil {
			return m
		}
		select {
		case <-h.wake:
		case <-stop:
			return nil
		}
	}
}

type chanHandoff chan *sink.Message

func (h chanHandoff) put(m *sink.Message) bool {
	select {
	case h <- m:
		return true
	default:
		return false
	}
}

func (h chanHandoff) take(stop <-chan struct{}) *sink.Message {
	select {
	case m := <-h:
		return m
	case <-stop:
		return nil
	}
}

// BenchmarkHandoff measures one message from Submit to a worker: producers
// put (retrying when full), 2 consumers take. ns/op is per message.
func BenchmarkHandoff(b *testing.B) {
	const size = 4096
	kinds := []struct {
		name string
		new  func() handoff
	}{
		{"ring", func() handoff { return &ringHandoff{r: newRing(size), wake: make(chan struct{}, 1)} }},
		// Sized for 10,000 connections (Config.MaxWaiting): 16,384 cells.
		{"ring16k", func() handoff { return &ringHandoff{r: newRing(10001), wake: make(chan struct{}, 1)} }},
		{"chan", func() handoff { return make(chanHandoff, size) }},
	}
	for _, producers := range []int{2, 4} {
		for _, k := range kinds {
			b.Run(fmt.Sprintf("%s/producers=%d", k.name, producers), func(b *testing.B) {
				h := k.new()
				var msg sink.Message
				var taken atomic.Int64
				stop := make(chan struct{})
				var cwg sync.WaitGroup
				for c := 0; c < 2; c++ {
					cwg.Add(1)
					go func() {
						defer cwg.Done()
						for h.take(stop) != nil {
							taken.Add(1)
						}
					}()
				}
				b.ReportAllocs()
				b.ResetTimer()
				var pwg sync.WaitGroup
				for p := 0; p < producers; p++ {
					n := b.N / producers
					if p == 0 {
						n += b.N % producers
					}
					pwg.Add(1)
					go func(n int) {
						defer pwg.Done()
						for i := 0; i < n; i++ {
							for !h.put(&msg) {
								runtime.Gosched()
							}
						}
					}(n)
				}
				pwg.Wait()
				for taken.Load() < int64(b.N) {
					runtime.Gosched()
				}
				b.StopTimer()
				close(stop)
				cwg.Wait()
			})
		}
	}
}
