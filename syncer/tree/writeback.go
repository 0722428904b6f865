package tree

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// StartWriteback starts writing the data of an initial sync back to disk
// while it is still being received, and returns the function that stops
// it. Left alone, the kernel keeps up to a fifth of memory dirty before it
// starts writing, so the Sync before the acknowledgement would write the
// whole transfer while the disk sat idle during it. A goroutine calls
// syncfs each time writebackEvery more bytes have been written: the
// kernel's flusher writes the data out in large sorted batches, and the
// writers never wait for it. It changes nothing to durability, which still
// comes from the Sync before a position is recorded or acknowledged.
//
// It also drops the files' pages once they are on disk ("drop-behind"): a
// clone does not read its copy until it is promoted, and pages freed as
// the sync goes are the ones the next files are written into. Pages that
// were never used cost far more to hand out than recycled ones (on a VM,
// a fault to the host each; about 2 s of CPU per GiB here), and the copy
// does not push the node's useful cache out.
func (a *Applier) StartWriteback() (stop func()) {
	wb := &writeback{kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go wb.run(a)
	a.wb.Store(wb)
	var once sync.Once
	return func() {
		once.Do(func() {
			a.wb.CompareAndSwap(wb, nil)
			close(wb.quit)
			<-wb.done
		})
	}
}

// writebackEvery is how much data is written between background syncfs
// calls.
var writebackEvery = int64(16 << 20)

// maxDropBehind bounds the descriptors held open for drop-behind; past it
// files are closed at once and their pages left to the kernel.
const maxDropBehind = 4096

type writeback struct {
	pending atomic.Int64
	kick    chan struct{}
	quit    chan struct{}
	done    chan struct{}

	mu     sync.Mutex
	fds    []int // committed files whose pages go once they are on disk
	closed bool  // stopped: nothing more is taken
}

func (wb *writeback) run(a *Applier) {
	defer close(wb.done)
	for {
		select {
		case <-wb.quit:
			// The caller's own Sync follows; what is still dirty stays.
			wb.mu.Lock()
			wb.closed = true
			wb.mu.Unlock()
			drop(wb.take())
			return
		case <-wb.kick:
		}
		wb.pending.Store(0)
		fds := wb.take()
		_ = a.Sync() // errors show up in the Sync that counts
		drop(fds)
	}
}

func (wb *writeback) take() []int {
	wb.mu.Lock()
	defer wb.mu.Unlock()
	fds := wb.fds
	wb.fds = nil
	return fds
}

// drop releases the clean pages of fds and closes them. Close errors of a
// local file carry nothing once its data is written: write errors surface
// in syncfs.
func drop(fds []int) {
	for _, fd := range fds {
		_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
		_ = unix.Close(fd)
	}
}

// dirtied tells the writeback goroutine, if one runs, about n more bytes.
func (a *Applier) dirtied(n int64) {
	wb := a.wb.Load()
	if wb == nil {
		return
	}
	if wb.pending.Add(n) >= writebackEvery {
		select {
		case wb.kick <- struct{}{}:
		default:
		}
	}
}

// dropBehind hands the descriptor of a committed file to the writeback
// goroutine, which closes it once the file's pages are written and
// dropped. It reports false, leaving fd to the caller, when no writeback
// runs or too many files wait.
func (a *Applier) dropBehind(fd int) bool {
	wb := a.wb.Load()
	if wb == nil {
		return false
	}
	wb.mu.Lock()
	defer wb.mu.Unlock()
	if wb.closed || len(wb.fds) >= maxDropBehind {
		return false
	}
	wb.fds = append(wb.fds, fd)
	return true
}
