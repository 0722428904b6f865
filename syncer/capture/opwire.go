package capture

import (
	"fmt"

	"github.com/bedrock-nomad/nomad-driver-bedrock/syncer/wire"
)

// opWireVersion leads every encoded op, so a later field can be added
// without a clone misreading an op it does not know.
const opWireVersion = 1

// AppendWire appends op's wire encoding (the payload of a TJournal frame)
// to dst. It copies op.Data, so the result outlives the FUSE request.
func (o Op) AppendWire(dst []byte) []byte {
	e := wire.Enc{B: dst}
	e.Uvarint(opWireVersion)
	e.Uvarint(uint64(o.Kind))
	e.String(o.Path)
	e.String(o.To)
	e.String(o.Target)
	e.Varint(o.Off)
	e.Varint(o.Size)
	e.Uvarint(uint64(o.Mode))
	e.Uvarint(uint64(o.UID))
	e.Uvarint(uint64(o.GID))
	e.Uvarint(o.Rdev)
	e.Uvarint(uint64(o.Flags))
	e.Uvarint(uint64(o.Set))
	e.Varint(o.Atime)
	e.Varint(o.Mtime)
	e.Bytes(o.Data)
	return e.B
}

// DecodeOp decodes an op that AppendWire encoded. Data aliases b. Names
// are not checked here: the Replayer refuses any that would leave its
// directory.
func DecodeOp(b []byte) (Op, error) {
	d := wire.NewDec(b)
	if v := d.Uvarint(); d.Err() == nil && v != opWireVersion {
		return Op{}, fmt.Errorf("journal op: encoding version %d, want %d: %w", v, opWireVersion, wire.ErrMalformed)
	}
	var o Op
	k := d.Uvarint()
	o.Path = d.String()
	o.To = d.String()
	o.Target = d.String()
	o.Off = d.Varint()
	o.Size = d.Varint()
	mode, uid, gid := d.Uvarint(), d.Uvarint(), d.Uvarint()
	o.Rdev = d.Uvarint()
	flags, set := d.Uvarint(), d.Uvarint()
	o.Atime = d.Varint()
	o.Mtime = d.Varint()
	o.Data = d.Bytes()
	if err := d.Done(); err != nil {
		return Op{}, fmt.Errorf("journal op: %w", err)
	}
	if k < uint64(OpWrite) || k > uint64(OpFlush) || mode > 1<<32-1 || uid > 1<<32-1 || gid > 1<<32-1 || flags > 1<<32-1 || set > 0xff {
		return Op{}, fmt.Errorf("journal op: field out of range: %w", wire.ErrMalformed)
	}
	o.Kind, o.Mode, o.UID, o.GID, o.Flags, o.Set = Kind(k), uint32(mode), uint32(uid), uint32(gid), uint32(flags), SetMask(set)
	if o.Kind != OpWrite && len(o.Data) > 0 {
		return Op{}, fmt.Errorf("journal op: %s with data: %w", o.Kind, wire.ErrMalformed)
	}
	return o, nil
}
