package replica

import (
	"errors"
	"fmt"
	"sync"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/tree"
	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// The bulk writer: the file frames of an initial sync are written by several writers at once.

// bulkWriters is how many files an initial sync writes at once. Creating
// many small files is system-call bound; two cores' worth of writers keeps
// the network side busy while the kernel allocates inodes.
const bulkWriters = 4

// A writer takes a batch of small files at once, which keeps the hand-offs
// between the reader and the writers (each a goroutine wake-up) far fewer
// than the files; a file from bulkStream bytes up is handed over on its
// own as soon as it begins, and streamed.
const (
	bulkStream = 1 << 20
	batchFiles = 64
	batchBytes = 1 << 20
)

type bulkJob struct {
	begin    wire.FileBegin
	received int64      // data bytes received so far
	data     []chunk    // a small file, complete
	chunks   chan chunk // a streamed file, as it arrives
}

// chunk is the data of one frame and the pool buffer holding it.
type chunk struct {
	wire.FileData
	buf []byte
}

// receiveBulk applies the file frames of an initial sync until Synced,
// writing several files at once (files of a sync are independent: their
// directories exist and nothing else touches them).
func (s *session) receiveBulk() error {
	c := s.c
	bufs := newBufPool()
	jobs := make(chan []*bulkJob, bulkWriters)
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		werr    error
		failed  = make(chan struct{})
		failOne sync.Once
	)
	fail := func(err error) {
		errMu.Lock()
		if werr == nil {
			werr = err
		}
		errMu.Unlock()
		failOne.Do(func() { close(failed) })
	}
	for i := 0; i < bulkWriters; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range jobs {
				for _, job := range batch {
					select {
					case <-failed:
						// Nothing more is written after a failure; a
						// streamed file is still drained for the reader.
						if job.chunks != nil {
							for range job.chunks {
							}
						}
						continue
					default:
					}
					if err := c.writeBulk(job, bufs); err != nil {
						fail(err)
					}
				}
			}
		}()
	}
	var (
		cur     *bulkJob
		batch   []*bulkJob
		batched int64 // bytes in batch
	)
	send := func(b []*bulkJob) bool {
		select {
		case jobs <- b:
			return true
		case <-failed:
			return false
		}
	}
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		b := batch
		batch, batched = nil, 0
		return send(b)
	}
	finish := func(err error) error {
		if cur != nil && cur.chunks != nil {
			close(cur.chunks)
		}
		close(jobs)
		wg.Wait()
		if err != nil {
			return err
		}
		errMu.Lock()
		defer errMu.Unlock()
		return werr
	}
	for {
		select {
		case <-failed:
			return finish(nil)
		default:
		}
		var got []byte
		f, d, err := s.readData(func(n int) []byte { got = bufs.get(n); return got })
		if err != nil {
			return finish(err)
		}
		if err := s.checkTerm(f); err != nil {
			return finish(err)
		}
		switch f.Type {
		case wire.TSynced:
			flush()
			return finish(nil)
		case wire.TError:
			return finish(peerError(f))
		case wire.TFileBegin:
			var b wire.FileBegin
			if err := b.Unmarshal(f.Payload); err != nil {
				return finish(err)
			}
			if err := checkName(b.Path); err != nil {
				return finish(err)
			}
			if cur != nil {
				return finish(errors.New("file begins inside another file"))
			}
			cur = &bulkJob{begin: b}
			if b.Size >= bulkStream {
				cur.chunks = make(chan chunk, 16)
				if !flush() || !send([]*bulkJob{cur}) {
					return finish(nil)
				}
			}
		case wire.TFileData:
			if cur == nil {
				return finish(errors.New("file data outside a file"))
			}
			// Never hold more than the file's declared size: a small
			// file's data waits here for its FileEnd, so a master that
			// sent more would make us buffer without bound.
			n := int64(len(d.Data))
			if d.Offset < 0 || d.Offset+n > cur.begin.Size || cur.received+n > cur.begin.Size {
				return finish(fmt.Errorf("%w: data for %q beyond its declared size of %d bytes", wire.ErrMalformed, cur.begin.Path, cur.begin.Size))
			}
			cur.received += n
			ch := chunk{FileData: d, buf: got}
			if cur.chunks == nil {
				cur.data = append(cur.data, ch)
				continue
			}
			select {
			case cur.chunks <- ch:
			case <-failed:
				return finish(nil)
			}
		case wire.TFileEnd:
			if cur == nil {
				return finish(errors.New("file end outside a file"))
			}
			if cur.chunks != nil {
				close(cur.chunks)
				cur = nil
				continue
			}
			batch = append(batch, cur)
			batched += cur.begin.Size
			cur = nil
			// Hand the batch over when it is full, or when the next read
			// would wait: the writers should not idle meanwhile.
			if (len(batch) >= batchFiles || batched >= batchBytes || s.r.Buffered() == 0) && !flush() {
				return finish(nil)
			}
		case wire.TFileGone:
			c.mu.Lock()
			c.st.Progress.FilesDone++
			c.mu.Unlock()
		default:
			return finish(fmt.Errorf("unexpected %s from master", f.Type))
		}
	}
}

// writeBulk writes one file of an initial sync. On error it still drains
// the job so the reader never blocks on it.
func (c *Clone) writeBulk(job *bulkJob, bufs *bufPool) (err error) {
	defer func() {
		if job.chunks != nil {
			for range job.chunks {
			}
		}
	}()
	fw, err := c.ap.BeginFile(job.begin, true)
	if err != nil {
		return applyError{err}
	}
	write := func(ch chunk) error {
		n := len(ch.Data)
		err := fw.Write(ch.FileData)
		bufs.put(ch.buf)
		if err != nil {
			fw.Abort()
			if errors.Is(err, tree.ErrBadBlock) || errors.Is(err, wire.ErrMalformed) {
				return err // transport problem: the resync re-requests
			}
			return applyError{err}
		}
		c.cfg.Metrics.BytesReceived.Add(float64(n))
		c.mu.Lock()
		c.st.Progress.BytesDone += int64(n)
		c.mu.Unlock()
		return nil
	}
	for _, ch := range job.data {
		if err := write(ch); err != nil {
			return err
		}
	}
	if job.chunks != nil {
		for ch := range job.chunks {
			if err := write(ch); err != nil {
				return err
			}
		}
	}
	if err := fw.Commit(); err != nil {
		return applyError{err}
	}
	c.mu.Lock()
	c.st.Progress.FilesDone++
	c.mu.Unlock()
	c.progress(false)
	return nil
}
