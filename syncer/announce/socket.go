package announce

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// maxSunPath is the usable length of a unix socket path (sun_path holds 108 bytes on Linux,
// including the terminating NUL). Nomad allocation directories under a deep data_dir can be
// longer, so longer paths are reached through the directory's /proc/self/fd entry.
const maxSunPath = 107

// shortPath returns a path to sock that fits into sun_path, and a function releasing what it
// holds. On Linux a long path is rewritten as /proc/self/fd/<dirfd>/<name>, which the kernel
// resolves through the open directory.
func shortPath(sock string) (string, func(), error) {
	if len(sock) <= maxSunPath {
		return sock, func() {}, nil
	}
	dir, err := os.Open(filepath.Dir(sock))
	if err != nil {
		return "", nil, fmt.Errorf("announce: socket path is %d bytes, over the %d-byte limit, and its directory cannot be opened: %w",
			len(sock), maxSunPath, err)
	}
	p := "/proc/self/fd/" + strconv.Itoa(int(dir.Fd())) + "/" + filepath.Base(sock)
	if len(p) > maxSunPath {
		_ = dir.Close()
		return "", nil, fmt.Errorf("announce: socket name %q is too long", filepath.Base(sock))
	}
	return p, func() { _ = dir.Close() }, nil
}

// listenUnix listens on sock, replacing a stale socket file left by a previous syncer (never
// any other kind of file), and makes it private to the owner.
func listenUnix(sock string) (*net.UnixListener, error) {
	if st, err := os.Lstat(sock); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("announce: %s exists and is not a socket; refusing to replace it", sock)
		}
		if err := os.Remove(sock); err != nil {
			return nil, fmt.Errorf("announce: remove stale socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("announce: %w", err)
	}
	p, release, err := shortPath(sock)
	if err != nil {
		return nil, err
	}
	defer release()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("announce: listen on %s: %w", sock, err)
	}
	// the listener must not unlink a /proc/self/fd/... name at Close; Announcer removes sock
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(sock, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("announce: chmod socket: %w", err)
	}
	return l, nil
}

// dialUnix connects to sock.
func dialUnix(ctx context.Context, sock string) (*net.UnixConn, error) {
	p, release, err := shortPath(sock)
	if err != nil {
		return nil, err
	}
	defer release()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", p)
	if err != nil {
		return nil, fmt.Errorf("announce: connect to %s: %w", sock, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("announce: %s: not a unix connection", sock)
	}
	return uc, nil
}
