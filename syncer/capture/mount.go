package capture

import (
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// DefaultCacheTimeout is how long the kernel may trust names and
// attributes it got from us. Nothing but the mount changes the backing
// directory (the syncer of a master never writes into it), and every
// change through the mount updates the kernel's caches itself, so long
// timeouts are safe; they spare a LOOKUP and a GETATTR round trip on
// nearly every open and stat.
const DefaultCacheTimeout = time.Hour

// DefaultMaxWrite is the largest WRITE request the kernel sends (its own
// maximum is 1 MiB with max_pages): fewer round trips for large writes.
const DefaultMaxWrite = 1 << 20

// Options tune a mount. The zero value is the tuned configuration; the
// other settings exist to measure what each one is worth (e2e/benchio).
type Options struct {
	// NoCache sets the entry and attribute timeouts to zero (go-fuse's
	// loopback example uses one second).
	NoCache bool
	// NoKeepCache drops a file's page cache on every open (no FOPEN_KEEP_CACHE).
	NoKeepCache bool
	// JournalFlush journals close(2) as OpFlush markers. Off, FLUSH
	// answers ENOSYS and the kernel stops sending it.
	JournalFlush bool
	// Xattrs passes extended attribute calls through to the backing
	// directory, unjournaled. Off (the default), they answer ENOSYS and the
	// kernel stops asking, which matters because it asks for
	// security.capability before every write.
	Xattrs bool
	// MaxWrite bounds a WRITE request; 0 means DefaultMaxWrite.
	MaxWrite int
	// Writeback enables the kernel's writeback cache: writes return as soon
	// as they are in the page cache, and the kernel sends them later, in
	// its own order. It breaks the prefix property (only the data of a
	// fsynced file is ordered before its marker) and exists only so the
	// benchmark can show what it would buy.
	Writeback bool
	// AllowOther lets users other than root use the mount (an app
	// container running as another uid needs it). Permissions are checked
	// by the kernel against the file modes (default_permissions).
	AllowOther bool
	// KernelPermissions off (NoDefaultPermissions) leaves permission checks
	// to the backing syscalls, which run as root: only for measurement.
	NoDefaultPermissions bool
	// Legacy turns off every mechanism added by issue 16's tuning, so
	// e2e/benchio can measure the configuration before it side by side
	// with the current one (mount-old). Only for measurement.
	Legacy bool
	// Debug logs every FUSE request.
	Debug bool

	// logger replaces the debug log's sink (tests count requests).
	logger *log.Logger
}

// Server is a mounted capture file system.
type Server struct {
	fs         *FS
	srv        *fuse.Server
	mountpoint string
}

// Mount serves backing at mountpoint; every change made through the
// mount is appended to j in order. The caller must Unmount it. The
// process needs CAP_SYS_ADMIN and /dev/fuse (it mounts with mount(2)
// directly: no fusermount helper is needed or used).
func Mount(backing, mountpoint string, j Journal, opt Options) (*Server, error) {
	if j == nil {
		return nil, errors.New("capture: no journal")
	}
	root, err := absDir(backing)
	if err != nil {
		return nil, fmt.Errorf("capture: backing directory: %w", err)
	}
	mp, err := absDir(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("capture: mount point: %w", err)
	}
	var st syscall.Stat_t
	var bt syscall.Timespec
	if err := statx(unix.AT_FDCWD, root, 0, &st, &bt); err != nil {
		return nil, fmt.Errorf("capture: backing directory: %w", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("capture: backing %s is not a directory", root)
	}
	f := &FS{root: root, dev: st.Dev, journal: j, opt: opt}
	f.barrier, _ = j.(Barrier)
	f.rootNode = &node{fsys: f}

	timeout := DefaultCacheTimeout
	if opt.NoCache {
		timeout = 0
	}
	maxWrite := opt.MaxWrite
	if maxWrite <= 0 {
		maxWrite = DefaultMaxWrite
	}
	mo := fuse.MountOptions{
		FsName:            root,
		Name:              "bedrock",
		MaxWrite:          maxWrite,
		DirectMountStrict: true,
		DisableXAttrs:     !opt.Xattrs,
		AllowOther:        opt.AllowOther,
		Debug:             opt.Debug,
		// Passthrough would let the kernel write to the backing file
		// without telling us; file does not offer a passthrough fd
		// either, this is a second lock on that door.
		DisabledCapabilities: fuse.CAP_PASSTHROUGH,
		Logger:               log.New(os.Stderr, "capture: ", 0),
	}
	if opt.logger != nil {
		mo.Logger = opt.logger
	}
	if !opt.NoDefaultPermissions {
		// The kernel checks modes and owners against the caller, as on
		// a plain directory: the server itself runs as root.
		mo.Options = append(mo.Options, "default_permissions")
	}
	if opt.Writeback {
		mo.ExtraCapabilities |= fuse.CAP_WRITEBACK_CACHE
	}
	fo := &gofs.Options{
		MountOptions:    mo,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
	}
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("capture: %w: %w (the container needs --device /dev/fuse)", errUnusable, err)
	}
	dev.Close()
	srv, err := gofs.Mount(mp, f.rootNode, fo)
	if err != nil {
		if errors.Is(err, syscall.EPERM) {
			err = fmt.Errorf("%w: %w (mounting needs CAP_SYS_ADMIN)", errUnusable, err)
		}
		return nil, fmt.Errorf("capture: mount %s: %w", mp, err)
	}
	return &Server{fs: f, srv: srv, mountpoint: mp}, nil
}

// Unmount unmounts and waits until the server has stopped. If the mount
// is busy (a process still has a file open or its cwd in it), it is
// detached lazily: it disappears from the namespace at once and the
// kernel ends it when the last user leaves; operations still in flight
// are still served (and journaled) until then.
func (s *Server) Unmount() error {
	err := s.srv.Unmount()
	if err != nil {
		if derr := unix.Unmount(s.mountpoint, unix.MNT_DETACH); derr != nil && !errors.Is(derr, unix.EINVAL) {
			return fmt.Errorf("capture: unmount %s: %w (lazy: %w)", s.mountpoint, err, derr)
		}
	}
	s.srv.Wait()
	return nil
}

// Mountpoint returns the absolute mount point.
func (s *Server) Mountpoint() string { return s.mountpoint }

// ErrUnusable reports whether err says the kernel or the process cannot
// use FUSE (no /dev/fuse, not privileged): tests skip on it.
func ErrUnusable(err error) bool { return errors.Is(err, errUnusable) }

// Pause holds every change through the mount (and name lookups) until
// the returned function is called; changes already under way complete
// first. The master pauses while it cuts a clone over from the watcher's
// stream to the journal: with nothing changing, the clone's copy can be
// proven equal to the directory at one journal position. Keep it short:
// the app's writes wait.
func (s *Server) Pause() (resume func()) {
	s.fs.mu.Lock()
	var once sync.Once
	return func() { once.Do(s.fs.mu.Unlock) }
}
