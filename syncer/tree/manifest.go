package tree

import (
	"fmt"
	"io/fs"
	"sort"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// AppendEntry encodes one manifest entry.
func AppendEntry(e *wire.Enc, ent *Entry) {
	e.String(ent.Path)
	e.Uvarint(uint64(ent.Type))
	e.Uvarint(uint64(ent.Mode))
	e.Varint(ent.MtimeNs)
	e.Uvarint(uint64(ent.UID))
	e.Uvarint(uint64(ent.GID))
	switch ent.Type {
	case TypeFile:
		e.Varint(ent.Size)
		e.Uvarint(uint64(len(ent.Hashes)))
		for _, h := range ent.Hashes {
			e.U64(h)
		}
	case TypeSymlink:
		e.String(ent.Target)
	}
}

// DecodeEntry decodes and validates one entry: the name must be valid and
// replicated, the type known, the hash count consistent with the size.
func DecodeEntry(d *wire.Dec) (*Entry, error) {
	ent := &Entry{}
	ent.Path = d.String()
	ent.Type = Type(d.Uvarint())
	ent.Mode = fs.FileMode(d.Uvarint())
	ent.MtimeNs = d.Varint()
	ent.UID = uint32(d.Uvarint())
	ent.GID = uint32(d.Uvarint())
	switch ent.Type {
	case TypeFile:
		ent.Size = d.Varint()
		n := d.Count(8)
		ent.Hashes = make([]uint64, n)
		for i := range ent.Hashes {
			ent.Hashes[i] = d.U64()
		}
		if d.Err() == nil && (ent.Size < 0 || int64(n) != Blocks(ent.Size)) {
			return nil, fmt.Errorf("%w: %s: %d hashes for %d bytes", wire.ErrMalformed, ent.Path, n, ent.Size)
		}
	case TypeSymlink:
		ent.Target = d.String()
		if d.Err() == nil && (ent.Target == "" || len(ent.Target) > MaxNameLen) {
			return nil, fmt.Errorf("%w: %s: bad symlink target", wire.ErrMalformed, ent.Path)
		}
	case TypeDir, TypeUnreadable:
	default:
		if d.Err() == nil {
			return nil, fmt.Errorf("%w: %s: unknown type %d", wire.ErrMalformed, ent.Path, ent.Type)
		}
	}
	if err := d.Err(); err != nil {
		return nil, err
	}
	if ent.Mode&^ModeMask != 0 {
		return nil, fmt.Errorf("%w: %s: bad mode %o", wire.ErrMalformed, ent.Path, uint32(ent.Mode))
	}
	if err := ValidName(ent.Path); err != nil {
		return nil, err
	}
	if Excluded(ent.Path) {
		return nil, fmt.Errorf("%w: %q is reserved", ErrBadName, ent.Path)
	}
	return ent, nil
}

// Sorted returns the entries of m ordered by name, so parents come before
// their children.
func Sorted(m map[string]*Entry) []*Entry {
	out := make([]*Entry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// EncodeManifest encodes entries into chunks of about chunkSize bytes and
// hands each to send; an entry larger than a chunk (a huge file's hash list)
// gets a chunk of its own, still below wire.MaxPayload for files up to 8 GiB.
func EncodeManifest(entries []*Entry, chunkSize int, send func([]byte) error) error {
	e := wire.Enc{B: make([]byte, 0, chunkSize)}
	for _, ent := range entries {
		AppendEntry(&e, ent)
		if len(e.B) >= chunkSize {
			if err := send(e.B); err != nil {
				return err
			}
			e.B = make([]byte, 0, chunkSize)
		}
	}
	if len(e.B) > 0 {
		return send(e.B)
	}
	return nil
}

// ManifestDecoder accumulates chunks and yields validated entries. Entries
// never span chunks (EncodeManifest cuts only between entries).
type ManifestDecoder struct {
	Entries map[string]*Entry
}

// Add decodes one chunk. Duplicate names and entries whose parent is not a
// directory listed earlier are rejected: a well-formed manifest is sorted.
func (m *ManifestDecoder) Add(chunk []byte) error {
	if m.Entries == nil {
		m.Entries = make(map[string]*Entry)
	}
	d := wire.NewDec(chunk)
	for len(d.B) > 0 {
		ent, err := DecodeEntry(d)
		if err != nil {
			return err
		}
		if _, dup := m.Entries[ent.Path]; dup {
			return fmt.Errorf("%w: duplicate %q", wire.ErrMalformed, ent.Path)
		}
		if p := Parent(ent.Path); p != "" {
			if pe := m.Entries[p]; pe == nil || pe.Type != TypeDir {
				return fmt.Errorf("%w: %q listed without its parent directory", wire.ErrMalformed, ent.Path)
			}
		}
		m.Entries[ent.Path] = ent
	}
	return nil
}
