package announce

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// checkPeer accepts a peer running as our own user or as root (SO_PEERCRED): the socket's
// mode already keeps others out, this also refuses a socket someone else put in our place.
func checkPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("announce: peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("announce: peer credentials: %w", err)
	}
	if credErr != nil {
		return fmt.Errorf("announce: peer credentials: %w", credErr)
	}
	if uid := uint32(os.Getuid()); cred.Uid != uid && cred.Uid != 0 {
		return fmt.Errorf("announce: peer pid %d runs as uid %d, want %d or root", cred.Pid, cred.Uid, uid)
	}
	return nil
}
