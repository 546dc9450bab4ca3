// Command stargz-writer converts a tar into a layer blob with stargz-snapshotter's own writer
// (github.com/containerd/stargz-snapshotter/estargz), the one `ctr-remote convert` uses, and
// checks eStargz blobs with its reader. strata's interop tests use it as a real foreign writer.
//
//	stargz-writer zstdchunked IN.tar OUT.blob   # prints {"digest","size","diffID","annotations"}
//	stargz-writer estargz IN.tar OUT.blob       # same, eStargz (gzip)
//	stargz-writer verify BLOB TOCDIGEST         # estargz.Open + VerifyTOC + every file's chunks
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

type result struct {
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	DiffID      string            `json:"diffID"`
	Annotations map[string]string `json:"annotations"`
}

func main() {
	if len(os.Args) != 4 {
		fail(fmt.Errorf("usage: stargz-writer zstdchunked|estargz|verify IN OUT|TOCDIGEST"))
	}
	var err error
	switch os.Args[1] {
	case "zstdchunked", "estargz":
		err = build(os.Args[1], os.Args[2], os.Args[3])
	case "verify":
		err = verify(os.Args[2], os.Args[3])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "stargz-writer:", err)
	os.Exit(1)
}

// zstdCompression pairs zstdchunked's compressor and decompressor, as ctr-remote does.
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

func section(path string) (*io.SectionReader, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	return io.NewSectionReader(f, 0, st.Size()), f, nil
}

func build(mode, in, out string) error {
	sr, f, err := section(in)
	if err != nil {
		return err
	}
	defer f.Close()
	annotations := map[string]string{}
	var opts []estargz.Option
	if mode == "zstdchunked" {
		opts = append(opts, estargz.WithCompression(zstdCompression{
			&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: annotations}, &zstdchunked.Decompressor{},
		}))
	}
	blob, err := estargz.Build(sr, opts...)
	if err != nil {
		return err
	}
	defer blob.Close()
	o, err := os.Create(out)
	if err != nil {
		return err
	}
	defer o.Close()
	d := digest.Canonical.Digester()
	n, err := io.Copy(io.MultiWriter(o, d.Hash()), blob)
	if err != nil {
		return err
	}
	if mode == "estargz" {
		annotations[estargz.TOCJSONDigestAnnotation] = blob.TOCDigest().String()
	}
	return json.NewEncoder(os.Stdout).Encode(result{
		Digest:      d.Digest().String(),
		Size:        n,
		DiffID:      blob.DiffID().String(),
		Annotations: annotations,
	})
}

func verify(path, tocDigest string) error {
	sr, f, err := section(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := estargz.Open(sr)
	if err != nil {
		return err
	}
	dg, err := digest.Parse(tocDigest)
	if err != nil {
		return err
	}
	v, err := r.VerifyTOC(dg)
	if err != nil {
		return err
	}
	files := 0
	var walk func(e *estargz.TOCEntry) error
	walk = func(e *estargz.TOCEntry) error {
		if e.Type == "reg" && e.Size > 0 {
			files++
			fr, err := r.OpenFile(e.Name)
			if err != nil {
				return fmt.Errorf("%s: %w", e.Name, err)
			}
			for off := int64(0); off < e.Size; {
				ce, ok := r.ChunkEntryForOffset(e.Name, off)
				if !ok {
					return fmt.Errorf("%s: no chunk at %d", e.Name, off)
				}
				cv, err := v.Verifier(ce)
				if err != nil {
					return fmt.Errorf("%s: %w", e.Name, err)
				}
				if _, err := io.Copy(cv, io.NewSectionReader(fr, ce.ChunkOffset, ce.ChunkSize)); err != nil {
					return err
				}
				if !cv.Verified() {
					return fmt.Errorf("%s: chunk at %d does not match its digest", e.Name, off)
				}
				off += ce.ChunkSize
			}
		}
		var err error
		e.ForeachChild(func(_ string, c *estargz.TOCEntry) bool {
			err = walk(c)
			return err == nil
		})
		return err
	}
	root, ok := r.Lookup("")
	if !ok {
		return fmt.Errorf("no root entry")
	}
	if err := walk(root); err != nil {
		return err
	}
	fmt.Printf("verified %d files\n", files)
	return nil
}
