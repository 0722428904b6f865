package replica

import (
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// The handshake, both sides of it (see the protocol outline in common.go): the master sends
// Hello, the clone answers Auth with its proof of the secret, the master answers AuthOK with
// its own, and both switch to the sealed stream keyed by the whole transcript (HandshakeKeys).
// Only the master's Hello and the clone's Auth pass in the clear.

// HandshakeKeys is the one handshake computation both sides make: from the
// Hello frame the master sent and the Auth frame the clone answered with
// (as each side sent or received them), the two proofs and the stream keys
// (wire.DeriveKeys). A relay that changes any of these fields makes the two
// sides compute different values, and the handshake fails. Exported for
// tools and tests that speak the protocol.
func HandshakeKeys(secret []byte, helloFrame wire.Frame, hello wire.Hello, authFrame wire.Frame, auth wire.Auth) (wire.Keys, error) {
	return wire.DeriveKeys(secret, wire.Transcript{
		Version: hello.Version, Session: hello.Session,
		ServerNonce: hello.Nonce, ClientNonce: auth.Nonce,
		ServerTerm: helloFrame.Term, ServerSeq: helloFrame.Seq,
		ClientTerm: authFrame.Term, ClientSeq: authFrame.Seq,
		ClientID: auth.ClientID,
	})
}

func peerError(f wire.Frame) error {
	var em wire.ErrorMsg
	_ = em.Unmarshal(f.Payload)
	return fmt.Errorf("master says: %s", em.Msg)
}

// handshake is the clone's side: it authenticates both ways and applies the fencing rule: a master
// of an older term than one we have seen is refused.
func (s *session) handshake() (wire.Hello, error) {
	c := s.c
	_ = s.conn.SetDeadline(time.Now().Add(handshakeTimeout))
	defer func() { _ = s.conn.SetDeadline(time.Time{}) }()
	var hello wire.Hello
	f, err := s.read(wire.MaxAuthPayload)
	if err != nil {
		return hello, fmt.Errorf("read hello: %w", err)
	}
	if f.Type != wire.THello || hello.Unmarshal(f.Payload) != nil {
		return hello, fmt.Errorf("%w: no valid hello from %s", ErrAuth, c.cfg.MasterAddr)
	}
	if hello.Version != wire.Version {
		return hello, fmt.Errorf("master speaks protocol %d, we speak %d", hello.Version, wire.Version)
	}
	st := c.cfg.State.Get()
	known := st.Term
	auth := wire.Auth{Nonce: nonce(), ClientID: c.cfg.ID}
	authF := wire.Frame{Type: wire.TAuth, Term: known, Seq: st.Position.Seq}
	keys, err := HandshakeKeys(c.cfg.Secret, f, hello, authF, auth)
	if err != nil {
		return hello, err
	}
	auth.MAC = keys.ClientMAC
	s.term = known
	if err := s.send(wire.TAuth, authF.Seq, auth.Marshal()); err != nil {
		return hello, err
	}
	g, err := s.read(wire.MaxAuthPayload)
	if err != nil {
		return hello, fmt.Errorf("%w: %w", ErrAuth, err)
	}
	if g.Type == wire.TError {
		return hello, fmt.Errorf("%w: %w", ErrAuth, peerError(g))
	}
	var ok wire.AuthOK
	if g.Type != wire.TAuthOK || ok.Unmarshal(g.Payload) != nil {
		return hello, fmt.Errorf("%w: bad auth reply", ErrAuth)
	}
	if !wire.CheckMAC(keys.ServerMAC, ok.MAC) {
		return hello, fmt.Errorf("%w: master at %s does not know the secret", ErrAuth, c.cfg.MasterAddr)
	}
	if s.seal, s.open, err = keys.Client(); err != nil {
		return hello, err
	}
	if f.Term < known {
		_ = s.send(wire.TError, 0, (&wire.ErrorMsg{Msg: fmt.Sprintf("stale term %d, seen %d", f.Term, known)}).Marshal())
		return hello, fmt.Errorf("%w: master has term %d, we have seen %d", ErrStaleTerm, f.Term, known)
	}
	if f.Term > known {
		if err := c.cfg.State.Update(func(st *State) { st.Term = f.Term }); err != nil {
			return hello, applyError{err}
		}
	}
	s.term, s.head = f.Term, f.Seq
	c.cfg.Metrics.Term.Set(float64(f.Term))
	return hello, nil
}

// peer is an authenticated clone, as the master's handshake leaves it.
type peer struct {
	// term is the highest term the clone has seen (its Auth frame's term): a newer one than
	// the master's fences the master.
	term uint64
	// id is the clone's id, for logs and metrics.
	id   string
	seal *wire.Sealer
	open *wire.Opener
}

// handshake is the master's side: it sends Hello, checks the clone's Auth against the secret,
// proves its own knowledge of the secret with AuthOK and keys the connection's ciphers. A peer
// that fails is logged, counted (AuthFailures) and refused (false); the caller closes it.
func (m *Master) handshake(conn net.Conn, log hclog.Logger) (peer, bool) {
	hello := wire.Hello{Version: wire.Version, Session: m.session, Nonce: nonce()}
	helloF := wire.Frame{Type: wire.THello, Term: m.cfg.Term, Seq: m.Position().Seq, Payload: hello.Marshal()}
	if _, err := conn.Write(wire.AppendFrame(nil, helloF)); err != nil {
		return peer{}, false
	}
	f, _, err := wire.ReadFrame(conn, wire.MaxAuthPayload, nil)
	if err != nil || f.Type != wire.TAuth {
		log.Warn("rejecting peer: no valid auth frame", "error", err)
		m.cfg.Metrics.AuthFailures.Inc()
		return peer{}, false
	}
	var auth wire.Auth
	if err := auth.Unmarshal(f.Payload); err != nil {
		log.Warn("rejecting peer: malformed auth", "error", err)
		m.cfg.Metrics.AuthFailures.Inc()
		return peer{}, false
	}
	keys, err := HandshakeKeys(m.cfg.Secret, helloF, hello, f, auth)
	if err != nil || !wire.CheckMAC(keys.ClientMAC, auth.MAC) {
		log.Warn("rejecting peer: authentication failed", "client", auth.ClientID)
		m.cfg.Metrics.AuthFailures.Inc()
		_, _ = conn.Write(wire.AppendFrame(nil, wire.Frame{Type: wire.TError, Payload: (&wire.ErrorMsg{Msg: "authentication failed"}).Marshal()}))
		return peer{}, false
	}
	ok := wire.AuthOK{MAC: keys.ServerMAC}
	if _, err := conn.Write(wire.AppendFrame(nil, wire.Frame{Type: wire.TAuthOK, Payload: ok.Marshal()})); err != nil {
		return peer{}, false
	}
	seal, open, err := keys.Server()
	if err != nil {
		log.Error("cannot set up the connection's cipher", "error", err)
		return peer{}, false
	}
	return peer{term: f.Term, id: auth.ClientID, seal: seal, open: open}, true
}
