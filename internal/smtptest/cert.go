package smtptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Cert is a self-signed certificate for mx.test written to PEM files.
type Cert struct {
	CertFile, KeyFile string
	Pool              *x509.CertPool
	Serial            *big.Int
	NotAfter          time.Time
}

// WriteCert makes a certificate with a P-256 (ecdsa) or RSA 2048 key.
func WriteCert(t testing.TB, dir, keyType string) Cert {
	t.Helper()
	var key any
	var pub any
	switch keyType {
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		must(t, err, "rsa key")
		key, pub = k, &k.PublicKey
	default:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(t, err, "ecdsa key")
		key, pub = k, &k.PublicKey
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	notAfter := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "mx.test"},
		DNSNames:     []string{"mx.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	must(t, err, "certificate")
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	must(t, err, "key")
	c := Cert{CertFile: filepath.Join(dir, keyType+"-cert.pem"), KeyFile: filepath.Join(dir, keyType+"-key.pem"),
		Pool: x509.NewCertPool(), Serial: serial, NotAfter: notAfter}
	must(t, os.WriteFile(c.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600), "write cert")
	must(t, os.WriteFile(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600), "write key")
	leaf, _ := x509.ParseCertificate(der)
	c.Pool.AddCert(leaf)
	return c
}

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
