package plugin

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
)

// ErrConfig is wrapped by every configuration decoding error.
var ErrConfig = errors.New("invalid configuration")

// DecodeConfig decodes msgpack of a cty object value (what the Nomad client
// sends for plugin and task config blocks) into a struct whose fields carry
// `msgpack:"name"` tags. Unlike a plain msgpack decode it names the field in
// every error and refuses names the struct does not declare, so a mismatch
// between our schema and our structs is caught instead of silently ignored.
// Map-valued options arrive as a list holding one map and decode into maps.
func DecodeConfig(data []byte, out any) error {
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("%w: DecodeConfig needs a pointer to a struct, got %T", ErrConfig, out)
	}
	if len(data) == 0 {
		return nil
	}
	return decodeStruct(data, rv.Elem(), "")
}

func fieldPath(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func decodeStruct(data []byte, sv reflect.Value, prefix string) error {
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	n, err := dec.DecodeMapLen()
	if err != nil {
		return fmt.Errorf("%w: %s: expected a block/object: %w", ErrConfig, orRoot(prefix), err)
	}
	if n < 0 { // null block
		return nil
	}
	fields := map[string]reflect.Value{}
	st := sv.Type()
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		tag := strings.Split(f.Tag.Get("msgpack"), ",")[0]
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		fields[tag] = sv.Field(i)
	}
	for i := 0; i < n; i++ {
		key, err := dec.DecodeString()
		if err != nil {
			return fmt.Errorf("%w: %s: bad key: %w", ErrConfig, orRoot(prefix), err)
		}
		raw, err := dec.DecodeRaw()
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrConfig, fieldPath(prefix, key), err)
		}
		fv, ok := fields[key]
		if !ok {
			return fmt.Errorf("%w: %s: unknown field", ErrConfig, fieldPath(prefix, key))
		}
		if err := decodeValue(raw, fv, fieldPath(prefix, key)); err != nil {
			return err
		}
	}
	return nil
}

func orRoot(p string) string {
	if p == "" {
		return "config"
	}
	return p
}

func isNil(raw []byte) bool { return len(raw) == 1 && raw[0] == 0xc0 }

func decodeValue(raw msgpack.RawMessage, fv reflect.Value, path string) error {
	if isNil(raw) {
		return nil
	}
	switch fv.Kind() {
	case reflect.Struct:
		return decodeStruct(raw, fv, path)
	case reflect.Pointer:
		if fv.Type().Elem().Kind() == reflect.Struct {
			nv := reflect.New(fv.Type().Elem())
			if err := decodeStruct(raw, nv.Elem(), path); err != nil {
				return err
			}
			fv.Set(nv)
			return nil
		}
	case reflect.Slice:
		if fv.Type().Elem().Kind() == reflect.Struct {
			return decodeStructList(raw, fv, path)
		}
	case reflect.Map:
		return decodeMap(raw, fv, path)
	}
	if err := msgpack.Unmarshal(raw, fv.Addr().Interface()); err != nil {
		return fmt.Errorf("%w: %s: want %s: %w", ErrConfig, path, describe(fv.Type()), err)
	}
	return nil
}

func decodeStructList(raw []byte, fv reflect.Value, path string) error {
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return fmt.Errorf("%w: %s: want a list of blocks: %w", ErrConfig, path, err)
	}
	out := reflect.MakeSlice(fv.Type(), 0, max(n, 0))
	for i := 0; i < n; i++ {
		item, err := dec.DecodeRaw()
		if err != nil {
			return fmt.Errorf("%w: %s[%d]: %w", ErrConfig, path, i, err)
		}
		ev := reflect.New(fv.Type().Elem()).Elem()
		if err := decodeStruct(item, ev, fmt.Sprintf("%s[%d]", path, i)); err != nil {
			return err
		}
		out = reflect.Append(out, ev)
	}
	fv.Set(out)
	return nil
}

// decodeMap accepts both a map and Nomad's list-of-one-map shape.
func decodeMap(raw []byte, fv reflect.Value, path string) error {
	code := raw[0]
	isArray := code == 0xdc || code == 0xdd || (code >= 0x90 && code <= 0x9f)
	target := reflect.New(fv.Type())
	if !isArray {
		if err := msgpack.Unmarshal(raw, target.Interface()); err != nil {
			return fmt.Errorf("%w: %s: want %s: %w", ErrConfig, path, describe(fv.Type()), err)
		}
		fv.Set(target.Elem())
		return nil
	}
	list := reflect.New(reflect.SliceOf(fv.Type()))
	if err := msgpack.Unmarshal(raw, list.Interface()); err != nil {
		return fmt.Errorf("%w: %s: want %s: %w", ErrConfig, path, describe(fv.Type()), err)
	}
	merged := reflect.MakeMap(fv.Type())
	for i := 0; i < list.Elem().Len(); i++ {
		iter := list.Elem().Index(i).MapRange()
		for iter.Next() {
			merged.SetMapIndex(iter.Key(), iter.Value())
		}
	}
	fv.Set(merged)
	return nil
}

func describe(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(describe(t.Elem()), "a ")
	case reflect.Map:
		return "a map of " + strings.TrimPrefix(describe(t.Elem()), "a ")
	default:
		return t.String()
	}
}
