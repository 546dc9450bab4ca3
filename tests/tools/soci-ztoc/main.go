// Command soci-ztoc reads a ztoc with soci-snapshotter's own generated FlatBuffers code
// (fbs/ztoc, copied from github.com/awslabs/soci-snapshotter ztoc/fbs/ztoc, Apache-2.0) the way
// soci-snapshotter's ztoc.Unmarshal does, and writes it back the way its ztoc.Marshal does.
// strata's interop test runs it on the ztocs strata writes: what comes back must be the same
// ztoc, so soci-snapshotter reads every field strata writes and strata reads what it writes.
//
//	soci-ztoc roundtrip IN OUT
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	fb "strata.invalid/soci-ztoc/fbs/ztoc"

	flatbuffers "github.com/google/flatbuffers/go"
)

type file struct {
	Name, Type, Linkname, Uname, Gname     string
	Offset, Size, Mode, Devmajor, Devminor int64
	UID, GID                               uint32
	ModTime                                time.Time
	PAX                                    map[string]string
}

type ztoc struct {
	Version, Tool   string
	Compressed, Tar int64
	Files           []file
	MaxSpanID       int32
	SpanDigests     []string
	Checkpoints     []byte
	Algorithm       fb.CompressionAlgorithm
}

func main() {
	if len(os.Args) != 4 || os.Args[1] != "roundtrip" {
		fail(errors.New("usage: soci-ztoc roundtrip IN OUT"))
	}
	in, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	z, err := unmarshal(in)
	if err != nil {
		fail(err)
	}
	if err := os.WriteFile(os.Args[3], marshal(z), 0o644); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "soci-ztoc:", err)
	os.Exit(1)
}

// unmarshal is soci-snapshotter's flatbufToZtoc, with its checks.
func unmarshal(buf []byte) (z *ztoc, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cannot unmarshal ztoc: %v", r)
		}
	}()
	root := fb.GetRootAsZtoc(buf, 0)
	z = &ztoc{
		Version:    string(root.Version()),
		Tool:       string(root.BuildToolIdentifier()),
		Compressed: root.CompressedArchiveSize(),
		Tar:        root.UncompressedArchiveSize(),
	}
	toc := new(fb.TOC)
	root.Toc(toc)
	for i := 0; i < toc.MetadataLength(); i++ {
		m := new(fb.FileMetadata)
		toc.Metadata(m, i)
		f := file{
			Name: string(m.Name()), Type: string(m.Type()), Linkname: string(m.Linkname()),
			Uname: string(m.Uname()), Gname: string(m.Gname()),
			Offset: m.UncompressedOffset(), Size: m.UncompressedSize(), Mode: m.Mode(),
			Devmajor: m.Devmajor(), Devminor: m.Devminor(), UID: m.Uid(), GID: m.Gid(),
			PAX: map[string]string{},
		}
		if err := f.ModTime.UnmarshalText(m.ModTime()); err != nil {
			return nil, fmt.Errorf("mod_time of %q: %w", f.Name, err)
		}
		for j := 0; j < m.XattrsLength(); j++ {
			x := new(fb.Xattr)
			m.Xattrs(x, j)
			f.PAX[string(x.Key())] = string(x.Value())
		}
		z.Files = append(z.Files, f)
	}
	sort.SliceStable(z.Files, func(i, j int) bool { return z.Files[i].Offset < z.Files[j].Offset })
	next := int64(0)
	for _, f := range z.Files {
		if next > f.Offset {
			return nil, fmt.Errorf("invalid toc entry %q", f.Name)
		}
		next = (f.Offset + f.Size + 511) / 512 * 512
	}
	info := new(fb.CompressionInfo)
	root.CompressionInfo(info)
	z.MaxSpanID = info.MaxSpanId()
	for i := 0; i < info.SpanDigestsLength(); i++ {
		z.SpanDigests = append(z.SpanDigests, string(info.SpanDigests(i)))
	}
	z.Checkpoints = append([]byte(nil), info.CheckpointsBytes()...)
	z.Algorithm = info.CompressionAlgorithm()
	return z, nil
}

// marshal is soci-snapshotter's ztocToFlatbuffer.
func marshal(z *ztoc) []byte {
	b := flatbuffers.NewBuilder(0)
	version := b.CreateString(z.Version)
	tool := b.CreateString(z.Tool)
	metas := make([]flatbuffers.UOffsetT, len(z.Files))
	for i := len(z.Files) - 1; i >= 0; i-- {
		metas[i] = file_(b, z.Files[i])
	}
	fb.TOCStartMetadataVector(b, len(metas))
	for i := len(metas) - 1; i >= 0; i-- {
		b.PrependUOffsetT(metas[i])
	}
	metaVec := b.EndVector(len(metas))
	fb.TOCStart(b)
	fb.TOCAddMetadata(b, metaVec)
	toc := fb.TOCEnd(b)
	checkpoints := b.CreateByteVector(z.Checkpoints)
	digests := make([]flatbuffers.UOffsetT, 0, len(z.SpanDigests))
	for _, d := range z.SpanDigests {
		digests = append(digests, b.CreateString(d))
	}
	fb.CompressionInfoStartSpanDigestsVector(b, len(digests))
	for i := len(digests) - 1; i >= 0; i-- {
		b.PrependUOffsetT(digests[i])
	}
	digestVec := b.EndVector(len(digests))
	fb.CompressionInfoStart(b)
	fb.CompressionInfoAddMaxSpanId(b, z.MaxSpanID)
	fb.CompressionInfoAddSpanDigests(b, digestVec)
	fb.CompressionInfoAddCheckpoints(b, checkpoints)
	fb.CompressionInfoAddCompressionAlgorithm(b, z.Algorithm)
	info := fb.CompressionInfoEnd(b)
	fb.ZtocStart(b)
	fb.ZtocAddVersion(b, version)
	fb.ZtocAddBuildToolIdentifier(b, tool)
	fb.ZtocAddToc(b, toc)
	fb.ZtocAddCompressedArchiveSize(b, z.Compressed)
	fb.ZtocAddUncompressedArchiveSize(b, z.Tar)
	fb.ZtocAddCompressionInfo(b, info)
	b.Finish(fb.ZtocEnd(b))
	return b.FinishedBytes()
}

func file_(b *flatbuffers.Builder, f file) flatbuffers.UOffsetT {
	name := b.CreateString(f.Name)
	t := b.CreateString(f.Type)
	link := b.CreateString(f.Linkname)
	uname := b.CreateString(f.Uname)
	gname := b.CreateString(f.Gname)
	mt, _ := f.ModTime.MarshalText()
	modTime := b.CreateString(string(mt))
	keys := make([]string, 0, len(f.PAX))
	for k := range f.PAX {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	xs := make([]flatbuffers.UOffsetT, 0, len(keys))
	for _, k := range keys {
		ko, vo := b.CreateString(k), b.CreateString(f.PAX[k])
		fb.XattrStart(b)
		fb.XattrAddKey(b, ko)
		fb.XattrAddValue(b, vo)
		xs = append(xs, fb.XattrEnd(b))
	}
	fb.FileMetadataStartXattrsVector(b, len(xs))
	for j := len(xs) - 1; j >= 0; j-- {
		b.PrependUOffsetT(xs[j])
	}
	xattrs := b.EndVector(len(xs))
	fb.FileMetadataStart(b)
	fb.FileMetadataAddName(b, name)
	fb.FileMetadataAddType(b, t)
	fb.FileMetadataAddUncompressedOffset(b, f.Offset)
	fb.FileMetadataAddUncompressedSize(b, f.Size)
	fb.FileMetadataAddLinkname(b, link)
	fb.FileMetadataAddMode(b, f.Mode)
	fb.FileMetadataAddUid(b, f.UID)
	fb.FileMetadataAddGid(b, f.GID)
	fb.FileMetadataAddUname(b, uname)
	fb.FileMetadataAddGname(b, gname)
	fb.FileMetadataAddModTime(b, modTime)
	fb.FileMetadataAddDevmajor(b, f.Devmajor)
	fb.FileMetadataAddDevminor(b, f.Devminor)
	fb.FileMetadataAddXattrs(b, xattrs)
	return fb.FileMetadataEnd(b)
}
