package allocate

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocpolicy"
)

// BenchmarkAllocatePolicy compares one allocation by the Contoso policy
// with one hashed allocation, both writing their allocation log entry.
func BenchmarkAllocatePolicy(b *testing.B) {
	src, err := os.ReadFile(filepath.Join("..", "..", "examples", "policies", "contoso.cel"))
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, policy string }{{"hashed", dps.AllocationHashed}, {"contoso", "contoso"}} {
		b.Run(tc.name, func(b *testing.B) {
			ts := newTestAllocator(b, hubList{hub(hubA, 1, true, ""), hub(hubB, 1, true, "")}, nil)
			reg := allocpolicy.New(ts.st, 0)
			if _, _, err := reg.Put(b.Context(), "contoso", allocpolicy.Definition{Expression: string(src)}, "", ""); err != nil {
				b.Fatal(err)
			}
			ts.alloc.policies = reg
			g := customGroup("policy:contoso", hubA, hubB)
			if tc.policy == dps.AllocationHashed {
				g.AllocationPolicy, g.CustomAllocationDefinition = dps.AllocationHashed, nil
			}
			b.ResetTimer()
			for i := range b.N {
				in := groupInput("breakroom"+string(rune('a'+i%26))+"-contoso-tstrsd-007-"+itoa(i), g)
				if _, err := ts.alloc.Allocate(b.Context(), in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var s []byte
	for ; i > 0; i /= 10 {
		s = append([]byte{digits[i%10]}, s...)
	}
	return string(s)
}
