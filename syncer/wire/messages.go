package wire

// Version is the protocol version sent in Hello; peers must match exactly.
const Version = 2 // 2: frames after the handshake are sealed (secure.go)

// NonceSize is the size of authentication nonces and MACs (HMAC-SHA256).
const NonceSize = 32

// Hello opens a connection (master to clone). Session identifies one run of a
// master: a clone may resume a position only within the same session, since
// sequence numbers are not persisted across master restarts.
type Hello struct {
	Version uint64
	Session uint64
	Nonce   [NonceSize]byte
}

// Auth answers Hello: the client's nonce and its MAC over both nonces.
type Auth struct {
	Nonce    [NonceSize]byte
	MAC      [NonceSize]byte
	ClientID string
}

// AuthOK proves the server knows the secret too (mutual authentication).
type AuthOK struct {
	MAC [NonceSize]byte
}

// Resume asks to continue after the frame's (term, seq) within Session.
type Resume struct {
	Session uint64
	// Journal says the clone followed the capture journal (it had been cut over), so the
	// master resumes it on the journal rather than on the watcher's operations.
	Journal bool
}

// Range is a run of blocks.
type Range struct {
	Start, Count uint64
}

// Request asks for blocks of one file of the manifest. KnownBlocks is the
// block count the clone based the request on; the master also sends any
// blocks past it (the file grew since the manifest). Whole means the clone
// will write a fresh file, so every block must come.
type Request struct {
	Path        string
	KnownBlocks uint64
	Whole       bool
	Ranges      []Range
}

// FileBegin starts the content of one file; blocks follow in FileData frames
// and FileEnd commits. Whole says the blocks cover the entire file.
type FileBegin struct {
	Path    string
	Size    int64
	Mode    uint32
	MtimeNs int64
	UID     uint32
	GID     uint32
	Whole   bool
}

// FileData carries consecutive blocks from a block-aligned Offset with the
// xxh3 hash of each block as read by the master, checked by the clone before
// anything is written.
type FileData struct {
	Offset int64
	Hashes []uint64
	Data   []byte
}

// Meta is a directory creation or a metadata update.
type Meta struct {
	Path    string
	Mode    uint32
	MtimeNs int64
	UID     uint32
	GID     uint32
}

// Symlink creates or replaces a symbolic link; the target is stored as is
// and never followed by the syncer.
type Symlink struct {
	Path    string
	Target  string
	MtimeNs int64
	UID     uint32
	GID     uint32
}

// PathMsg names one path (delete, file gone).
type PathMsg struct {
	Path string
}

// Rename moves From to To.
type Rename struct {
	From, To string
}

// ErrorMsg tells the peer why the connection is being closed.
type ErrorMsg struct {
	Msg string
}

// Marshal encodes the Hello payload.
func (m *Hello) Marshal() []byte {
	e := Enc{}
	e.Uvarint(m.Version)
	e.U64(m.Session)
	e.B = append(e.B, m.Nonce[:]...)
	return e.B
}

// Unmarshal decodes a Hello payload, rejecting malformed or trailing input.
func (m *Hello) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Version = d.Uvarint()
	m.Session = d.U64()
	d.Fixed(m.Nonce[:])
	return d.Done()
}

// Marshal encodes the Auth payload.
func (m *Auth) Marshal() []byte {
	e := Enc{}
	e.B = append(e.B, m.Nonce[:]...)
	e.B = append(e.B, m.MAC[:]...)
	e.String(m.ClientID)
	return e.B
}

// Unmarshal decodes a Auth payload, rejecting malformed or trailing input.
func (m *Auth) Unmarshal(b []byte) error {
	d := NewDec(b)
	d.Fixed(m.Nonce[:])
	d.Fixed(m.MAC[:])
	m.ClientID = d.String()
	return d.Done()
}

// Marshal encodes the AuthOK payload.
func (m *AuthOK) Marshal() []byte { return append([]byte(nil), m.MAC[:]...) }

// Unmarshal decodes a AuthOK payload, rejecting malformed or trailing input.
func (m *AuthOK) Unmarshal(b []byte) error {
	d := NewDec(b)
	d.Fixed(m.MAC[:])
	return d.Done()
}

// Marshal encodes the Resume payload.
func (m *Resume) Marshal() []byte { e := Enc{}; e.U64(m.Session); e.Bool(m.Journal); return e.B }

// Unmarshal decodes a Resume payload, rejecting malformed or trailing input.
func (m *Resume) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Session = d.U64()
	m.Journal = d.Bool()
	return d.Done()
}

// Marshal encodes the Request payload.
func (m *Request) Marshal() []byte {
	e := Enc{}
	e.String(m.Path)
	e.Uvarint(m.KnownBlocks)
	e.Bool(m.Whole)
	e.Uvarint(uint64(len(m.Ranges)))
	for _, r := range m.Ranges {
		e.Uvarint(r.Start)
		e.Uvarint(r.Count)
	}
	return e.B
}

// Unmarshal decodes a Request payload, rejecting malformed or trailing input.
func (m *Request) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Path = d.String()
	m.KnownBlocks = d.Uvarint()
	m.Whole = d.Bool()
	n := d.Count(2)
	m.Ranges = make([]Range, 0, n)
	for i := 0; i < n && d.Err() == nil; i++ {
		m.Ranges = append(m.Ranges, Range{Start: d.Uvarint(), Count: d.Uvarint()})
	}
	return d.Done()
}

// Marshal encodes the FileBegin payload.
func (m *FileBegin) Marshal() []byte {
	e := Enc{}
	e.String(m.Path)
	e.Varint(m.Size)
	e.Uvarint(uint64(m.Mode))
	e.Varint(m.MtimeNs)
	e.Uvarint(uint64(m.UID))
	e.Uvarint(uint64(m.GID))
	e.Bool(m.Whole)
	return e.B
}

// Unmarshal decodes a FileBegin payload, rejecting malformed or trailing input.
func (m *FileBegin) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Path = d.String()
	m.Size = d.Varint()
	m.Mode = uint32(d.Uvarint())
	m.MtimeNs = d.Varint()
	m.UID = uint32(d.Uvarint())
	m.GID = uint32(d.Uvarint())
	m.Whole = d.Bool()
	if err := d.Done(); err != nil {
		return err
	}
	if m.Size < 0 {
		return ErrMalformed
	}
	return nil
}

// Marshal encodes the FileData payload.
func (m *FileData) Marshal() []byte {
	e := Enc{B: make([]byte, 0, 16+8*len(m.Hashes)+len(m.Data))}
	e.Varint(m.Offset)
	e.Uvarint(uint64(len(m.Hashes)))
	for _, h := range m.Hashes {
		e.U64(h)
	}
	e.Bytes(m.Data)
	return e.B
}

// AppendHeader encodes everything but the data bytes, which follow it
// directly in the payload (see WriteFrameParts).
func (m *FileData) AppendHeader(dst []byte) []byte {
	e := Enc{B: dst}
	e.Varint(m.Offset)
	e.Uvarint(uint64(len(m.Hashes)))
	for _, h := range m.Hashes {
		e.U64(h)
	}
	e.Uvarint(uint64(len(m.Data)))
	return e.B
}

// Unmarshal decodes a FileData payload, rejecting malformed or trailing input.
func (m *FileData) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Offset = d.Varint()
	n := d.Count(8)
	m.Hashes = make([]uint64, 0, n)
	for i := 0; i < n && d.Err() == nil; i++ {
		m.Hashes = append(m.Hashes, d.U64())
	}
	m.Data = d.Bytes()
	if err := d.Done(); err != nil {
		return err
	}
	if m.Offset < 0 {
		return ErrMalformed
	}
	return nil
}

// Marshal encodes the Meta payload.
func (m *Meta) Marshal() []byte {
	e := Enc{}
	e.String(m.Path)
	e.Uvarint(uint64(m.Mode))
	e.Varint(m.MtimeNs)
	e.Uvarint(uint64(m.UID))
	e.Uvarint(uint64(m.GID))
	return e.B
}

// Unmarshal decodes a Meta payload, rejecting malformed or trailing input.
func (m *Meta) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Path = d.String()
	m.Mode = uint32(d.Uvarint())
	m.MtimeNs = d.Varint()
	m.UID = uint32(d.Uvarint())
	m.GID = uint32(d.Uvarint())
	return d.Done()
}

// Marshal encodes the Symlink payload.
func (m *Symlink) Marshal() []byte {
	e := Enc{}
	e.String(m.Path)
	e.String(m.Target)
	e.Varint(m.MtimeNs)
	e.Uvarint(uint64(m.UID))
	e.Uvarint(uint64(m.GID))
	return e.B
}

// Unmarshal decodes a Symlink payload, rejecting malformed or trailing input.
func (m *Symlink) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Path = d.String()
	m.Target = d.String()
	m.MtimeNs = d.Varint()
	m.UID = uint32(d.Uvarint())
	m.GID = uint32(d.Uvarint())
	return d.Done()
}

// Marshal encodes the PathMsg payload.
func (m *PathMsg) Marshal() []byte { e := Enc{}; e.String(m.Path); return e.B }

// Unmarshal decodes a PathMsg payload, rejecting malformed or trailing input.
func (m *PathMsg) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Path = d.String()
	return d.Done()
}

// Marshal encodes the Rename payload.
func (m *Rename) Marshal() []byte { e := Enc{}; e.String(m.From); e.String(m.To); return e.B }

// Unmarshal decodes a Rename payload, rejecting malformed or trailing input.
func (m *Rename) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.From = d.String()
	m.To = d.String()
	return d.Done()
}

// Marshal encodes the ErrorMsg payload.
func (m *ErrorMsg) Marshal() []byte { e := Enc{}; e.String(m.Msg); return e.B }

// Unmarshal decodes a ErrorMsg payload, rejecting malformed or trailing input.
func (m *ErrorMsg) Unmarshal(b []byte) error {
	d := NewDec(b)
	m.Msg = d.String()
	return d.Done()
}

// Unmarshaler is implemented by every message.
type Unmarshaler interface{ Unmarshal([]byte) error }

// MessageFor returns an empty message for frame type t, or nil for types
// whose payload is empty or opaque (manifest chunks).
func MessageFor(t Type) Unmarshaler {
	switch t {
	case THello:
		return &Hello{}
	case TAuth:
		return &Auth{}
	case TAuthOK:
		return &AuthOK{}
	case TResume:
		return &Resume{}
	case TRequest:
		return &Request{}
	case TFileBegin:
		return &FileBegin{}
	case TFileData:
		return &FileData{}
	case TMkdir, TMeta:
		return &Meta{}
	case TSymlink:
		return &Symlink{}
	case TDelete, TFileGone:
		return &PathMsg{}
	case TRename:
		return &Rename{}
	case TError:
		return &ErrorMsg{}
	}
	return nil
}
