package replica

import (
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

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
