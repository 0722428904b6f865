package replica

// bufPool recycles the data buffers of an initial sync between its reader
// and its writers, in a few sizes (a frame's body: FileData header and
// data), so that a tree of tiny files does not hold a large buffer per
// file while it waits in a batch.
type bufPool struct {
	classes [3]chan []byte
}

// tinyBuf is the size up to which buffers are not recycled.
const tinyBuf = 4 << 10

var poolSizes = [3]struct{ size, keep int }{
	{16 << 10, 64},              // small files
	{68 << 10, 32},              // files up to 64 KiB
	{dataChunk + (4 << 10), 24}, // full frames
}

func newBufPool() *bufPool {
	p := &bufPool{}
	for i, c := range poolSizes {
		p.classes[i] = make(chan []byte, c.keep)
	}
	return p
}

func (p *bufPool) get(n int) []byte {
	if n <= tinyBuf {
		return make([]byte, n) // not worth keeping: the GC has it back soon
	}
	for i, c := range poolSizes {
		if n <= c.size {
			select {
			case b := <-p.classes[i]:
				return b[:n]
			default:
				return make([]byte, n, c.size)
			}
		}
	}
	return make([]byte, n)
}

func (p *bufPool) put(b []byte) {
	for i, c := range poolSizes {
		if cap(b) == c.size {
			select {
			case p.classes[i] <- b[:c.size]:
			default:
			}
			return
		}
	}
}
