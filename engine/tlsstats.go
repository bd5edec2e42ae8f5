package engine

import (
	"crypto/tls"
	"slices"
	"sync/atomic"
)

// TLSStats are the TLS and AUTH counters, atomics like the rest of Stats.
type TLSStats struct {
	// Handshakes completed, by negotiated version (TLSVersions order).
	Handshakes [numTLSVersions]atomic.Int64
	// HandshakeFailed counts handshakes that did not complete, by reason.
	HandshakeFailed [numHandshakeFailures]atomic.Int64
	// DiscardedBytes is plaintext a client pipelined behind STARTTLS,
	// dropped unread (CVE-2011-0411).
	DiscardedBytes atomic.Int64
	// Sessions over TLS open now; AuthSessions of them authenticated.
	Sessions, AuthSessions atomic.Int64
	// Auth counts AUTH commands by result.
	Auth [numAuthResults]atomic.Int64
	// CertExpiry is the NotAfter of the certificate in force (Unix
	// seconds), 0 without one.
	CertExpiry atomic.Int64
	// CertReloadFailures and AuthFileReloadFailures count loads that
	// failed (the previous files stayed in force).
	CertReloadFailures, AuthFileReloadFailures atomic.Int64
}

// tlsVersionIDs are the versions we may negotiate, in the order of
// TLSStats.Handshakes.
var tlsVersionIDs = [...]uint16{tls.VersionTLS12, tls.VersionTLS13}

const numTLSVersions = len(tlsVersionIDs)

func (st *TLSStats) countHandshake(v uint16) {
	if i := slices.Index(tlsVersionIDs[:], v); i >= 0 {
		st.Handshakes[i].Add(1)
	}
}

// TLSVersions names the versions of TLSStats.Handshakes, for the exporter.
func TLSVersions() []string {
	names := make([]string, numTLSVersions)
	for i, v := range tlsVersionIDs {
		names[i] = tls.VersionName(v)
	}
	return names
}
