package replica

import (
	"errors"
	"fmt"
	"io"
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

// Peer is an authenticated clone, as the master's side of the handshake leaves it.
type Peer struct {
	// Term is the highest term the clone has seen (its Auth frame's term): a newer one than
	// the master's fences the master.
	Term uint64
	// ID is the clone's id, for logs and metrics.
	ID string
	// Seal and Open are the connection's two directions from now on (wire/secure.go).
	Seal *wire.Sealer
	Open *wire.Opener
}

// reasonAuthFailed is the Rejection of a peer whose proof of the secret is wrong.
const reasonAuthFailed = "authentication failed"

// errCipher is a failure to key the connection once the peer is authenticated.
var errCipher = errors.New("cannot set up the connection's cipher")

// Rejection is why ServerHandshake refused a peer that did not prove the secret: what the
// master logs and counts (AuthFailures).
type Rejection struct {
	// Reason says what was wrong ("no valid auth frame", "authentication failed").
	Reason string
	// Client is the id the peer claimed, when it sent one.
	Client string
	// Err is the underlying error, if any.
	Err error
}

func (r *Rejection) Error() string {
	msg := "rejecting peer: " + r.Reason
	if r.Err != nil {
		msg += ": " + r.Err.Error()
	}
	return msg
}

func (r *Rejection) Unwrap() error { return r.Err }

// ServerHandshake is the master's side of the handshake on conn: it sends Hello (session, and
// the master's term and head seq), checks the clone's Auth against secret (a peer that fails
// is told "authentication failed" and refused with a *Rejection), proves its own knowledge of
// the secret with AuthOK and keys the connection's ciphers. It reads exactly the Auth frame,
// so the caller may buffer conn afterwards. Exported for tests and tools that play a master.
func ServerHandshake(conn io.ReadWriter, secret []byte, session, term, seq uint64) (Peer, error) {
	hello := wire.Hello{Version: wire.Version, Session: session, Nonce: nonce()}
	helloF := wire.Frame{Type: wire.THello, Term: term, Seq: seq, Payload: hello.Marshal()}
	if _, err := conn.Write(wire.AppendFrame(nil, helloF)); err != nil {
		return Peer{}, fmt.Errorf("send hello: %w", err)
	}
	f, _, err := wire.ReadFrame(conn, wire.MaxAuthPayload, nil)
	if err != nil || f.Type != wire.TAuth {
		return Peer{}, &Rejection{Reason: "no valid auth frame", Err: err}
	}
	var auth wire.Auth
	if err := auth.Unmarshal(f.Payload); err != nil {
		return Peer{}, &Rejection{Reason: "malformed auth", Err: err}
	}
	keys, err := HandshakeKeys(secret, helloF, hello, f, auth)
	if err != nil || !wire.CheckMAC(keys.ClientMAC, auth.MAC) {
		_, _ = conn.Write(wire.AppendFrame(nil, wire.Frame{Type: wire.TError, Payload: (&wire.ErrorMsg{Msg: "authentication failed"}).Marshal()}))
		return Peer{}, &Rejection{Reason: reasonAuthFailed, Client: auth.ClientID}
	}
	ok := wire.AuthOK{MAC: keys.ServerMAC}
	if _, err := conn.Write(wire.AppendFrame(nil, wire.Frame{Type: wire.TAuthOK, Payload: ok.Marshal()})); err != nil {
		return Peer{}, fmt.Errorf("send auth ok: %w", err)
	}
	seal, open, err := keys.Server()
	if err != nil {
		return Peer{}, fmt.Errorf("%w: %w", errCipher, err)
	}
	return Peer{Term: f.Term, ID: auth.ClientID, Seal: seal, Open: open}, nil
}

// handshake runs ServerHandshake for the master: a rejected peer is logged and counted, and
// the caller closes any peer that fails (false).
func (m *Master) handshake(conn net.Conn, log hclog.Logger) (Peer, bool) {
	p, err := ServerHandshake(conn, m.cfg.Secret, m.session, m.cfg.Term, m.Position().Seq)
	var rj *Rejection
	switch {
	case err == nil:
		return p, true
	case errors.As(err, &rj) && rj.Reason == reasonAuthFailed:
		log.Warn("rejecting peer: "+rj.Reason, "client", rj.Client)
	case errors.As(err, &rj):
		log.Warn("rejecting peer: "+rj.Reason, "error", rj.Err)
	case errors.Is(err, errCipher):
		log.Error("cannot set up the connection's cipher", "error", err)
		return Peer{}, false
	default:
		return Peer{}, false // the peer went away
	}
	m.cfg.Metrics.AuthFailures.Inc()
	return Peer{}, false
}
