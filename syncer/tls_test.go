package syncer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	cert, err := x509.ParseCertificate(der)
	must(t, err)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes ca.pem, cert.pem and key.pem for a peer into dir.
func (ca *testCA) issue(t *testing.T, dir string) []string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "bedrock-sync"},
		DNSNames: []string{"bedrock-sync"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	must(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	must(t, os.MkdirAll(dir, 0o700))
	files := []string{filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")}
	must(t, os.WriteFile(files[0], pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	must(t, os.WriteFile(files[1], pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	must(t, os.WriteFile(files[2], ca.pem, 0o600))
	return []string{"-tls-cert", files[0], "-tls-key", files[1], "-tls-ca", files[2]}
}

// TestMutualTLS replicates over mutual TLS and refuses a clone whose
// certificate comes from another CA, even though it knows the secret.
func TestMutualTLS(t *testing.T) {
	certs := t.TempDir()
	ca, other := newCA(t, "job CA"), newCA(t, "someone else")
	mdir, cdir, xdir := t.TempDir(), t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(mdir, "f.txt"), []byte("over TLS"), 0o644)
	m := startSyncer(t, "master", mdir, procOpt{extra: ca.issue(t, filepath.Join(certs, "m"))})
	startSyncer(t, "clone", cdir, procOpt{master: m.listen, extra: ca.issue(t, filepath.Join(certs, "c"))})
	waitEqual(t, 20*time.Second, mdir, cdir)

	x := startSyncer(t, "foreign-clone", xdir, procOpt{master: m.listen, extra: other.issue(t, filepath.Join(certs, "x"))})
	waitFor(t, 10*time.Second, "foreign certificate refused", func() bool {
		e := x.status().Error
		return strings.Contains(e, "certificate") || strings.Contains(e, "tls")
	})
	if _, err := os.Stat(filepath.Join(xdir, "f.txt")); err == nil {
		t.Fatal("clone with a foreign certificate got data")
	}
}
