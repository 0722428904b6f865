package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Write is one line of the writer app: "w term=T id=I seq=N t=UNIXNANO".
type Write struct {
	Term uint64
	ID   string
	Seq  uint64
	At   time.Time
	Line string
}

// Key identifies a write across the places it is found (the witness, the data, lost+found):
// instance, term and sequence.
func (w Write) Key() string { return fmt.Sprintf("%s/%d/%d", w.ID, w.Term, w.Seq) }

// ParseWrite parses one writer line.
func ParseWrite(line string) (Write, error) {
	w := Write{Line: line}
	f := strings.Fields(line)
	if len(f) != 5 || f[0] != "w" {
		return w, fmt.Errorf("not a writer line: %q", line)
	}
	for _, kv := range f[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return w, fmt.Errorf("not a writer line: %q", line)
		}
		var err error
		switch k {
		case "term":
			w.Term, err = strconv.ParseUint(v, 10, 64)
		case "id":
			w.ID = v
		case "seq":
			w.Seq, err = strconv.ParseUint(v, 10, 64)
		case "t":
			var ns int64
			ns, err = strconv.ParseInt(v, 10, 64)
			w.At = time.Unix(0, ns)
		default:
			err = errors.New("unknown field " + k)
		}
		if err != nil {
			return w, fmt.Errorf("writer line %q: %w", line, err)
		}
	}
	return w, nil
}

// ReadWrites parses a file of writer lines; a torn last line (a write cut by a kill) is
// ignored, a missing file is empty.
func ReadWrites(path string) ([]Write, error) {
	f, err := os.Open(path) //nolint:gosec // test files
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading writes: %w", err)
	}
	defer func() { _ = f.Close() }()
	var out []Write
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		w, err := ParseWrite(sc.Text())
		if err != nil {
			continue
		}
		out = append(out, w)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

// lineSet is a set of writes, by Key.
type lineSet map[string]bool

func setOf(ws []Write) lineSet {
	s := lineSet{}
	for _, w := range ws {
		s[w.Key()] = true
	}
	return s
}

// lostFoundWrites returns the writer lines kept under the data dir's lost+found.
func lostFoundWrites(dataDir string) lineSet {
	s := lineSet{}
	_ = filepath.WalkDir(filepath.Join(dataDir, "lost+found"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil //nolint:nilerr // best effort: a missing dir is empty
		}
		ws, _ := ReadWrites(p)
		for _, w := range ws {
			s[w.Key()] = true
		}
		return nil
	})
	return s
}
