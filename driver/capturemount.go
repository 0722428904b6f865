package driver

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"golang.org/x/sys/unix"
)

// The host side of the capture modes (syncer.mode = "async" or "sync").
//
// In a capture mode the app's data path is a FUSE mount served by the
// syncer: every write the app makes goes through the syncer, which
// journals it before it applies it to its real copy of the data (package
// syncer/capture). The layout on the node:
//
//   - <allocdir>/<syncer task>/local/data, the "backing" directory, holds
//     the data. The syncer container sees it at /local/data; no other task
//     binds it, so the app never writes to it behind the syncer's back.
//   - <allocdir>/alloc/bedrock-live, which the app binds at its `data`
//     path instead of alloc/data (see captureDirName), is the mount point: the syncer mounts the
//     capture file system onto it when it becomes master (and only then:
//     on a clone nothing is mounted there, and the app does not run).
//
// The syncer makes the mount inside its own container, onto /alloc/bedrock-live.
// For the app container to see it, the mount must propagate out of the
// syncer's mount namespace to the host's path: the syncer container binds
// <allocdir>/alloc/bedrock-live at /alloc/bedrock-live with rshared propagation. Docker
// refuses an rshared bind whose source is not on a shared mount, and a
// node's root file system is often private (it is shared only where
// systemd made it so). So before it creates the syncer container the
// plugin, which runs as root in the node's mount namespace, turns
// <allocdir>/alloc/bedrock-live into a shared mount point of its own: a bind mount
// of the directory onto itself, made shared. The app container binds the
// same host path; Docker resolves that bind when the container starts,
// which the gate allows only after the syncer announced master, i.e. after
// the FUSE mount is in place, so the app sees the capture file system.
//
// When the syncer task is destroyed, the plugin unmounts what is stacked
// on <allocdir>/alloc/bedrock-live (a dead FUSE mount, then its own shared bind),
// so Nomad's garbage collection can remove the allocation directory.

// fuseDevice is the FUSE device the syncer container needs in a capture
// mode.
const fuseDevice = "/dev/fuse"

// captureBackingDir is the backing directory inside the syncer task's
// local dir.
const captureBackingDir = "data"

// fuseAvailable tells whether the node has the FUSE device (the fuse
// kernel module is loaded).
func fuseAvailable() bool {
	fi, err := os.Stat(fuseDevice)
	return err == nil && fi.Mode()&fs.ModeCharDevice != 0
}

// errNoFUSE is the error of a capture mode on a node without FUSE.
func errNoFUSE(mode string) error {
	return fieldError("syncer.mode", "%q captures writes through a FUSE mount, but this node has no %s (load the module: modprobe fuse); mode = %q needs no FUSE",
		mode, fuseDevice, syncerModeWatch)
}

// captureDirName is the capture mount point, a directory of the
// allocation's shared dir. Not alloc/data itself: Nomad chmods alloc/data
// when it restores an allocation, before any plugin may act, and a mount
// left dead by a syncer killed with its node (the containers gone, the
// host up) would make that fail with ENOTCONN and the allocation with it.
// Nomad never touches other names there.
const captureDirName = "bedrock-live"

// allocDataDir is the capture mount point on the host. The app task binds
// it at its data path instead of alloc/data when it exists (appDataSource).
func allocDataDir(allocDir string) string {
	return filepath.Join(allocDir, "alloc", captureDirName)
}

// appDataSource is what an app task binds at its data path: the capture
// mount point when the allocation's syncer runs in a capture mode (its
// StartTask made it, before the app's: the syncer is a prestart task, as
// the gate marker already assumes), else alloc/data.
func appDataSource(allocDir string) string {
	if fi, err := os.Lstat(allocDataDir(allocDir)); err == nil && fi.IsDir() {
		return allocDataDir(allocDir)
	}
	return filepath.Join(allocDir, "alloc", "data")
}

// prepareCaptureMount readies the host for a syncer container in a
// capture mode: the backing directory exists, a dead FUSE mount a previous
// syncer left on the data directory is detached, and the data directory
// is a shared mount point. It is idempotent.
func prepareCaptureMount(allocDir, taskName string) error {
	data := allocDataDir(allocDir)
	if err := os.MkdirAll(filepath.Dir(data), 0o777); err != nil {
		return fmt.Errorf("alloc dir: %w", err)
	}
	p, err := resolveMountPath(data)
	if err != nil {
		return err
	}
	if _, err := detachDeadMounts(p); err != nil {
		return err
	}
	if err := os.MkdirAll(p, 0o777); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	// MkdirAll honours the umask; the mount point must be as open as alloc/data.
	if err := os.Chmod(p, 0o777); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	backing := filepath.Join(allocDir, taskName, "local", captureBackingDir)
	if _, err := os.Stat(backing); errors.Is(err, fs.ErrNotExist) {
		// The mount's root shows the backing dir's mode: give it the data
		// dir's (Nomad makes that one writable by any task user).
		mode := fs.FileMode(0o777)
		if fi, err := os.Stat(filepath.Join(allocDir, "alloc", "data")); err == nil {
			mode = fi.Mode().Perm()
		}
		if err := os.MkdirAll(backing, 0o755); err != nil {
			return fmt.Errorf("backing dir: %w", err)
		}
		if err := os.Chmod(backing, mode); err != nil {
			return fmt.Errorf("backing dir: %w", err)
		}
	}
	return shareMountPoint(p)
}

// releaseCaptureMount undoes prepareCaptureMount and what the syncer
// mounted: everything stacked on the data directory is detached.
func releaseCaptureMount(allocDir string) (int, error) {
	p, err := resolveMountPath(allocDataDir(allocDir))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // already removed
	}
	if err != nil {
		return 0, err
	}
	return unmountAll(p)
}

// resolveMountPath resolves symbolic links in p's parent, the way the
// kernel reports mount points in mountinfo. p itself is not stat'ed: a
// dead FUSE mount there answers ENOTCONN.
func resolveMountPath(p string) (string, error) {
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return "", fmt.Errorf("resolving %s: %w", p, err)
	}
	return filepath.Join(dir, filepath.Base(p)), nil
}

// isDeadMount is true for the error of an access to a FUSE mount whose
// server is gone.
func isDeadMount(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED)
}

// maxStacked bounds the unmount loops: more mounts than this on one
// directory is not something the plugin made.
const maxStacked = 32

// detachDeadMounts lazily unmounts dead FUSE mounts on top of p (left by
// a syncer that died while master) until p answers again; the shared bind
// below them stays. It returns how many it detached.
func detachDeadMounts(p string) (int, error) {
	n := 0
	for ; n < maxStacked; n++ {
		var st unix.Stat_t
		err := unix.Stat(p, &st)
		if err == nil || !isDeadMount(err) {
			return n, nil
		}
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			return n, fmt.Errorf("detaching the dead FUSE mount on %s: %w", p, err)
		}
	}
	return n, fmt.Errorf("%s: more than %d dead mounts stacked", p, maxStacked)
}

// shareMountPoint makes p a shared mount point: if nothing is mounted on
// p, a bind mount of p onto itself, then shared propagation on the mount
// at the top of p. Both steps are idempotent.
func shareMountPoint(p string) error {
	ms, err := mountsAt(p)
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		if err := unix.Mount(p, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s onto itself: %w", p, err)
		}
	} else if top := topMount(ms); top.shared {
		return nil
	}
	if err := unix.Mount("", p, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("making %s a shared mount: %w", p, err)
	}
	return nil
}

// unmountAll lazily unmounts everything stacked on p, top first, until p
// is no mount point (EINVAL) or is gone (ENOENT). It returns how many it
// unmounted.
func unmountAll(p string) (int, error) {
	for n := 0; n < maxStacked; n++ {
		err := unix.Unmount(p, unix.MNT_DETACH)
		switch {
		case err == nil:
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return n, nil
		default:
			return n, fmt.Errorf("unmounting %s: %w", p, err)
		}
	}
	return maxStacked, fmt.Errorf("%s: more than %d mounts stacked", p, maxStacked)
}

// mountEntry is a line of /proc/self/mountinfo.
type mountEntry struct {
	id, parent int
	point      string
	fsType     string
	shared     bool
}

// mountsAt lists the mounts whose mount point is exactly p, from the
// plugin's (the node's) mount namespace.
func mountsAt(p string) ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	defer func() { _ = f.Close() }()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		m, ok := parseMountInfo(sc.Text())
		if ok && m.point == p {
			out = append(out, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	return out, nil
}

// parseMountInfo parses one mountinfo line (proc(5)): id parent dev root
// point options [optional fields...] - fstype source super-options.
func parseMountInfo(line string) (mountEntry, bool) {
	fields := strings.Fields(line)
	if len(fields) < 7 {
		return mountEntry{}, false
	}
	var m mountEntry
	var err1, err2 error
	m.id, err1 = strconv.Atoi(fields[0])
	m.parent, err2 = strconv.Atoi(fields[1])
	if err1 != nil || err2 != nil {
		return mountEntry{}, false
	}
	m.point = unescapeMountInfo(fields[4])
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			if i+1 < len(fields) {
				m.fsType = fields[i+1]
			}
			break
		}
		if strings.HasPrefix(fields[i], "shared:") {
			m.shared = true
		}
	}
	return m, true
}

// unescapeMountInfo undoes the octal escapes (\040 for a space, ...) of a
// mountinfo path.
func unescapeMountInfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// topMount is the mount of ms (all at one mount point) that no other of
// them is stacked on: the one a path lookup reaches.
func topMount(ms []mountEntry) mountEntry {
	below := map[int]bool{}
	for _, m := range ms {
		below[m.parent] = true
	}
	for _, m := range ms {
		if !below[m.id] {
			return m
		}
	}
	return ms[len(ms)-1]
}

// releaseCapture unmounts the capture mounts of an allocation whose syncer
// is gone. A failure is logged, never returned: it must not fail the
// task's destruction, and leaves at worst a directory Nomad's GC cannot
// remove.
func (d *Driver) releaseCapture(allocDir string) {
	if allocDir == "" {
		return
	}
	n, err := releaseCaptureMount(allocDir)
	if err != nil {
		d.logger.Warn("unmounting the capture mounts of the data dir failed", "path", allocDataDir(allocDir), "error", err)
		return
	}
	if n > 0 {
		d.logger.Debug("unmounted the capture mounts of the data dir", "path", allocDataDir(allocDir), "mounts", n)
	}
}

// captureAllocDir is the allocation dir of a syncer container in a capture
// mode, read from its rshared bind of the data dir; "" for any other
// container.
func captureAllocDir(c container.Summary) string {
	if c.Labels[labelCapture] == "" {
		return ""
	}
	for _, m := range c.Mounts {
		if m.Type != mount.TypeBind || m.Destination != containerAllocDir+"/"+captureDirName {
			continue
		}
		data := filepath.Clean(m.Source)
		if filepath.Base(data) != captureDirName || filepath.Base(filepath.Dir(data)) != "alloc" {
			return ""
		}
		return filepath.Dir(filepath.Dir(data))
	}
	return ""
}

// captureFSType is what the kernel calls a capture mount (go-fuse's
// "fuse." + the Name the syncer mounts with).
const captureFSType = "fuse.bedrock"

// reapDeadCaptureMounts detaches every capture mount on the node whose
// server died with its syncer container (a whole-node crash of the
// containers, dockerd restarting without live-restore). Left in place, such
// a mount answers ENOTCONN to everything, and Nomad's own allocation
// set-up (which chmods alloc/data when it restores the allocation) fails
// before any task of ours could clean it: so the plugin does it when it
// starts, before Nomad restores allocations, and then on the reaper's
// period.
func (d *Driver) reapDeadCaptureMounts() {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if m, ok := parseMountInfo(sc.Text()); ok && m.fsType == captureFSType {
			points = append(points, m.point)
		}
	}
	_ = f.Close()
	for _, p := range points {
		n, err := detachDeadMounts(p)
		if err != nil {
			d.logger.Warn("a dead capture mount could not be detached", "path", p, "error", err)
		} else if n > 0 {
			d.logger.Info("detached the capture mount of a syncer that died", "path", p)
		}
	}
}
