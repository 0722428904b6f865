//go:build !linux

package announce

import "net"

// checkPeer relies on the socket's file mode where SO_PEERCRED is not available.
func checkPeer(*net.UnixConn) error { return nil }
