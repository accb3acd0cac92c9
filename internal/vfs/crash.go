package vfs

import (
	"maps"
	"math/rand/v2"
	"slices"
)

// sectorSize is the unit a disk writes whole: a write that is cut short by
// a power loss is torn at these boundaries (of the file's offsets; the
// model assumes files start on a sector, as they do).
const sectorSize = 512

// Crash returns a new CrashFS holding what a power loss at this instant
// could leave on disk, chosen with rng: the same state and seed give the
// same clone. The receiver is unchanged and stays usable; its open files do
// not carry over, so a test reopens its store on the clone, as a restarted
// process would.
//
// Directories keep their durable entries plus a random prefix of the
// operations made in them since they were last synced; a rename is applied
// whole or not at all, so a directory's prefix is cut short before a rename
// that its other directory does not keep.
//
// A file keeps its synced content plus a random subset of the writes and
// truncations made since its last sync, applied in order. An applied write
// may be torn: only some of its 512-byte sectors land. Bytes no kept write
// covers hold what they held before: the synced content where there was
// some; past it, zeros or, in some files, garbage (blocks allocated but
// never written). The file may also end up longer than what was applied, up
// to its current size, the extra being zeros or garbage alike: its size
// reached the disk and its data did not.
//
// So synced content survives, except where an unsynced write or truncation
// changed it since; and a name survives once its directory was synced.
func (c *CrashFS) Crash(rng *rand.Rand) *CrashFS {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.crashNamespace(rng)
	return c.clone(v, func(n *inode) []byte { return n.crashImage(rng) })
}

// CrashClean returns a new CrashFS holding only what is durable: the
// strictest power loss, where nothing unsynced reached the disk.
func (c *CrashFS) CrashClean() *CrashFS {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clone(make(view), func(n *inode) []byte { return slices.Clone(n.durable) })
}

// view is the directories' entries after a crash, copied from their durable
// entries when first changed.
type view map[*inode]map[string]*inode

func (v view) entries(d *inode) map[string]*inode {
	m, ok := v[d]
	if !ok {
		m = maps.Clone(d.synced)
		if m == nil {
			m = make(map[string]*inode)
		}
		v[d] = m
	}
	return m
}

// crashNamespace picks for each directory how many of its operations in the
// log survive, then shortens those prefixes until every operation survives
// in all of its directories or in none. Called with c.mu held.
func (c *CrashFS) crashNamespace(rng *rand.Rand) view {
	var dirs []*inode // in order of first use, for a reproducible rng
	count := make(map[*inode]int)
	pos := make([][]int, len(c.log)) // pos[i][k]: op i's place among op.dirs[k]'s operations
	for i, op := range c.log {
		for _, d := range op.dirs {
			if _, ok := count[d]; !ok {
				dirs = append(dirs, d)
			}
			pos[i] = append(pos[i], count[d])
			count[d]++
		}
	}
	cut := make(map[*inode]int, len(dirs))
	for _, d := range dirs {
		cut[d] = pick(rng, count[d])
	}
	survives := func(i int) bool {
		for k, d := range c.log[i].dirs {
			if pos[i][k] >= cut[d] {
				return false
			}
		}
		return true
	}
	for changed := true; changed; {
		changed = false
		for i, op := range c.log {
			if survives(i) {
				continue
			}
			for k, d := range op.dirs {
				if pos[i][k] < cut[d] {
					cut[d], changed = pos[i][k], true
				}
			}
		}
	}
	v := make(view)
	for i, op := range c.log {
		if survives(i) {
			op.apply(v.entries)
		}
	}
	return v
}

// pick returns a number in [0, n], favouring the ends: nothing and
// everything are the cases that find most bugs.
func pick(rng *rand.Rand, n int) int {
	switch rng.IntN(4) {
	case 0:
		return 0
	case 1:
		return n
	}
	return rng.IntN(n + 1)
}

// crashImage returns content a power loss could leave for file n.
func (n *inode) crashImage(rng *rand.Rand) []byte {
	img := slices.Clone(n.durable)
	if len(n.pending) == 0 {
		return img
	}
	garbage := rng.IntN(4) == 0
	fill := func(b []byte) {
		if garbage {
			fillRandom(rng, b)
		} else {
			clear(b)
		}
	}
	// none, all untorn, or each with probability keep and maybe torn
	mode, keep := rng.IntN(4), rng.Float64()
	for _, op := range n.pending {
		if mode == 0 || mode > 1 && rng.Float64() >= keep {
			continue
		}
		if op.truncate {
			img = resize(img, op.size) // a hole: zeros
			continue
		}
		end := op.off + int64(len(op.data))
		if old := int64(len(img)); end > old {
			img = resize(img, end)
			fill(img[old:])
		}
		torn := mode > 1 && rng.IntN(3) == 0
		for s := op.off; s < end; {
			e := min((s/sectorSize+1)*sectorSize, end)
			if !torn || rng.IntN(2) == 0 {
				copy(img[s:e], op.data[s-op.off:e-op.off])
			}
			s = e
		}
	}
	if cur, have := int64(len(n.data)), int64(len(img)); cur > have && rng.IntN(4) == 0 {
		img = resize(img, have+1+rng.Int64N(cur-have))
		fill(img[have:])
	}
	return img
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := i; j < min(i+8, len(b)); j++ {
			b[j], v = byte(v), v>>8
		}
	}
}

// clone builds a CrashFS from the entries v gives for each directory,
// with content for each file. Called with c.mu held.
func (c *CrashFS) clone(v view, content func(*inode) []byte) *CrashFS {
	out := &CrashFS{}
	copied := make(map[*inode]*inode)
	var copyDir func(d *inode) *inode
	copyDir = func(d *inode) *inode {
		nd := newDir(d.mode, d.modTime)
		m := v.entries(d)
		for _, name := range sortedNames(m) {
			child := m[name]
			nc, ok := copied[child]
			if !ok {
				if child.isDir {
					nc = copyDir(child)
				} else {
					data := content(child)
					nc = &inode{mode: child.mode, modTime: child.modTime, data: data, durable: slices.Clone(data)}
				}
				copied[child] = nc
			}
			nd.children[name], nd.synced[name] = nc, nc
		}
		return nd
	}
	out.root = copyDir(c.root)
	return out
}
