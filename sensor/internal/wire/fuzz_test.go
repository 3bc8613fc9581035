package wire

import (
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the parser: it must never panic, must
// report every failure as ErrMalformed, and whatever it accepts must respect
// the layout's limits. Run with: go test -fuzz FuzzParse ./sensor/internal/wire
func FuzzParse(f *testing.F) {
	f.Add(execRecord("/bin/sh", "sh\x00-c\x00id\x00", "cri-containerd-1.scope\x00kubepods-pod2.slice\x00"))
	c := hdr(KindConnect, ConnectSize)
	binary.LittleEndian.PutUint16(c[80:], 10)
	f.Add(c)
	f.Add(hdr(KindExit, ExitSize))
	p := hdr(KindPriv, PrivSize)
	binary.LittleEndian.PutUint32(p[80:], 3)
	f.Add(p)
	o := hdr(KindOpen, OpenFixedSize+4)
	binary.LittleEndian.PutUint32(o[84:], 4)
	f.Add(o)
	f.Add([]byte{})
	var parser Parser
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		err := parser.Parse(b, &r)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if len(r.Exe) > ExeMax || len(r.Path) > OpenPathMax || len(r.CgroupLeaf) > 2*(CgroupNameMax+1) || len(r.Name) > 64 {
			t.Fatalf("accepted a record beyond the layout limits: %+v", r)
		}
		if r.Kind == 0 || r.Kind >= NumKinds {
			t.Fatalf("accepted kind %d", r.Kind)
		}
	})
}
