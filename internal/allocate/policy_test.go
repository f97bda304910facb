package allocate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/provision"
)

const distributionIDs = 100_000

// TestHashedDistribution allocates 100,000 registration ids over several
// weight sets. Tolerance: every hub's count must be within 5 binomial
// standard deviations (sqrt(N·p·(1−p)), p = w/Σw) of N·p, and within 0.75
// percentage points of N·p. The ids and the hash are fixed, so the figures
// are the same on every run; the test logs them.
func TestHashedDistribution(t *testing.T) {
	weightSets := [][]int{
		{1, 1},
		{1, 1, 1},
		{1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
		{1, 2, 3, 4},
		{1, 1000},
		{10, 10, 80},
		{1000, 999, 500, 1},
	}
	ids := make([]string, distributionIDs)
	for i := range ids {
		ids[i] = fmt.Sprintf("device-%06d", i)
	}
	for _, weights := range weightSets {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			hubs := make([]*linkedhub.Hub, len(weights))
			total := 0
			for i, w := range weights {
				hubs[i] = hub(fmt.Sprintf("hub-%d.example", i), w, true, "")
				total += w
			}
			counts := map[string]int{}
			for _, id := range ids {
				counts[Hashed(id, hubs).Name]++
			}
			var figures []string
			for i, h := range hubs {
				p := float64(weights[i]) / float64(total)
				want := distributionIDs * p
				sigma := math.Sqrt(distributionIDs * p * (1 - p))
				got := counts[h.Name]
				dev := float64(got) - want
				figures = append(figures, fmt.Sprintf("w=%d: %d (expected %.0f, %+.2fσ)", weights[i], got, want, dev/math.Max(sigma, 1e-9)))
				if math.Abs(dev) > 5*sigma || math.Abs(dev) > 0.0075*distributionIDs {
					t.Errorf("hub %s (weight %d): %d devices; want %.0f ± min(5σ=%.0f, 750)", h.Name, weights[i], got, want, 5*sigma)
				}
			}
			t.Logf("weights %v over %d ids: %s", weights, distributionIDs, strings.Join(figures, "; "))
		})
	}
}

// TestHashedStability: the choice depends only on the lower-cased id and
// the hub set, and changing the set moves only the devices that must move.
func TestHashedStability(t *testing.T) {
	three := []*linkedhub.Hub{hub(hubA, 1, true, ""), hub(hubB, 1, true, ""), hub(hubC, 1, true, "")}
	four := append(slices.Clone(three), hub("contoso-new-hub.azure-devices.net", 1, true, ""))
	rng := rand.New(rand.NewPCG(1, 2))
	moved := 0
	const n = 20_000
	for i := range n {
		id := fmt.Sprintf("Sensor-%d", i)
		first := Hashed(id, three)
		if Hashed(strings.ToLower(id), three) != first || Hashed(strings.ToUpper(id), three) != first {
			t.Fatalf("%s: the case of the id changes its hub", id)
		}
		shuffled := slices.Clone(three)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if Hashed(id, shuffled) != first {
			t.Fatalf("%s: the order of the hubs changes its hub", id)
		}
		after := Hashed(id, four)
		if after != first {
			moved++
			if after != four[3] {
				t.Fatalf("%s moved from %s to %s when a hub was added; only moves to the new hub are allowed", id, first.Name, after.Name)
			}
		}
	}
	// Adding a fourth equal hub should move about a quarter of the devices.
	if share := float64(moved) / n; share < 0.23 || share > 0.27 {
		t.Errorf("adding a hub moved %.3f of devices; want about 0.25", share)
	}
	if Hashed("x", nil) != nil {
		t.Error("Hashed with no hubs is not nil")
	}
}

// TestPolicies covers candidate selection and the hashed, static and
// geoLatency policies (custom is in webhook_test.go).
func TestPolicies(t *testing.T) {
	linked := hubList{
		hub(hubA, 1, true, "westeurope"),
		hub(hubB, 1, true, "eastus"),
		hub(hubC, 1, false, "westeurope"), // only when named
	}
	nets, err := ParseNetworkMap("10.1.0.0/16=westeurope,eastus; 10.2.0.0/16=eastus\n10.3.0.0/16=northeurope,eastus;10.4.0.0/16=antarctica; 2001:db8::/32=eastus; 10.1.9.0/24=eastus")
	if err != nil {
		t.Fatal(err)
	}
	group := func(policy string, hubs ...string) *dps.EnrollmentGroup {
		return &dps.EnrollmentGroup{EnrollmentGroupID: "g", AllocationPolicy: policy, IoTHubs: hubs,
			Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}
	}
	// hashedAmong is the hashed choice among the named hubs.
	hashedAmong := func(id string, names ...string) string {
		var hs []*linkedhub.Hub
		for _, n := range names {
			for _, h := range linked {
				if h.Name == n {
					hs = append(hs, h)
				}
			}
		}
		return Hashed(id, hs).Name
	}
	tests := []struct {
		name          string
		defaultPolicy string
		in            *provision.AllocationInput
		wantHub       string
		wantCode      int
	}{
		// hashed
		{name: "hashed over applicable linked hubs", in: groupInput("dev-1", group(dps.AllocationHashed)), wantHub: hashedAmong("dev-1", hubA, hubB)},
		{name: "default policy is hashed", in: groupInput("dev-2", group("")), wantHub: hashedAmong("dev-2", hubA, hubB)},
		{name: "hashed over named hubs", in: groupInput("dev-3", group(dps.AllocationHashed, hubB, hubC)), wantHub: hashedAmong("dev-3", hubB, hubC)},
		{name: "hashed skips unlinked named hubs", in: groupInput("dev-4", group(dps.AllocationHashed, "gone.example", hubC)), wantHub: hubC},
		{name: "hashed with only unlinked hubs", in: groupInput("dev-5", group(dps.AllocationHashed, "gone.example")), wantCode: dps.CodeIoTHubNotLinked},
		// static
		{name: "static with one named hub", in: groupInput("dev-6", group(dps.AllocationStatic, hubB)), wantHub: hubB},
		{name: "static names a hub without apply policy", in: groupInput("dev-7", group(dps.AllocationStatic, strings.ToUpper(hubC))), wantHub: hubC},
		{name: "static with two named hubs", in: groupInput("dev-8", group(dps.AllocationStatic, hubA, hubB)), wantCode: dps.CodeNoHubForAllocation},
		{name: "static naming nothing, two applicable hubs", in: groupInput("dev-9", group(dps.AllocationStatic)), wantCode: dps.CodeNoHubForAllocation},
		{name: "static with unlinked hub", in: groupInput("dev-10", group(dps.AllocationStatic, "gone.example")), wantCode: dps.CodeIoTHubNotLinked},
		{name: "static as instance default", defaultPolicy: "Static", in: groupInput("dev-11", group("", hubA)), wantHub: hubA},
		{name: "legacy iotHubHostName", in: groupInput("dev-12", &dps.EnrollmentGroup{EnrollmentGroupID: "g", IoTHubHostName: hubC}), wantHub: hubC},
		{name: "legacy iotHubHostName not linked", in: groupInput("dev-13", &dps.EnrollmentGroup{EnrollmentGroupID: "g", IoTHubHostName: "old.example"}), wantCode: dps.CodeIoTHubNotLinked},
		{name: "never reprovision keeps the current hub", in: func() *provision.AllocationInput {
			g := group(dps.AllocationHashed, hubA, hubB)
			g.ReprovisionPolicy = &dps.ReprovisionPolicy{}
			in := groupInput("dev-14", g)
			in.Previous = &dps.DeviceRegistrationState{AssignedHub: hubB, Status: dps.StatusAssigned}
			return in
		}(), wantHub: hubB},
		// geoLatency
		{name: "geo: first location with a candidate", in: geoInput("dev-20", "10.1.2.3:4000", group(dps.AllocationGeoLatency)), wantHub: hubA},
		{name: "geo: longest prefix wins", in: geoInput("dev-21", "10.1.9.7:4000", group(dps.AllocationGeoLatency)), wantHub: hubB},
		{name: "geo: other network", in: geoInput("dev-22", "10.2.0.1:1", group(dps.AllocationGeoLatency)), wantHub: hubB},
		{name: "geo: nearest location without hubs, next one", in: geoInput("dev-23", "10.3.0.1:1", group(dps.AllocationGeoLatency)), wantHub: hubB},
		{name: "geo: named hubs only", in: geoInput("dev-24", "10.1.2.3:4000", group(dps.AllocationGeoLatency, hubB, hubC)), wantHub: hubC},
		{name: "geo: IPv6", in: geoInput("dev-25", "[2001:db8::5]:443", group(dps.AllocationGeoLatency)), wantHub: hubB},
		{name: "geo: IPv4-mapped IPv6", in: geoInput("dev-26", "[::ffff:10.2.3.4]:443", group(dps.AllocationGeoLatency)), wantHub: hubB},
		{name: "geo: bare address", in: geoInput("dev-27", "10.2.3.4", group(dps.AllocationGeoLatency)), wantHub: hubB},
		{name: "geo: no location has hubs, falls back to hashed", in: geoInput("dev-28", "10.4.0.1:1", group(dps.AllocationGeoLatency)), wantHub: hashedAmong("dev-28", hubA, hubB)},
		{name: "geo: unknown network falls back to hashed", in: geoInput("dev-29", "192.0.2.1:1", group(dps.AllocationGeoLatency)), wantHub: hashedAmong("dev-29", hubA, hubB)},
		{name: "geo: no address falls back to hashed", in: geoInput("dev-30", "", group(dps.AllocationGeoLatency)), wantHub: hashedAmong("dev-30", hubA, hubB)},
		{name: "geo as instance default", defaultPolicy: dps.AllocationGeoLatency, in: geoInput("dev-31", "10.2.0.9:1", group("")), wantHub: hubB},
		{name: "unknown policy", in: groupInput("dev-40", group("roundRobin")), wantCode: dps.CodeNoHubForAllocation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(Options{Hubs: linked, DefaultPolicy: tt.defaultPolicy, Networks: nets, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			got, err := a.Allocate(t.Context(), tt.in)
			if tt.wantCode != 0 {
				if errCode(err) != tt.wantCode {
					t.Fatalf("Allocate = %+v, %v; want code %d", got, err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			if got.Hub != tt.wantHub {
				t.Errorf("hub = %s; want %s", got.Hub, tt.wantHub)
			}
		})
	}
}

func geoInput(id, addr string, g *dps.EnrollmentGroup) *provision.AllocationInput {
	in := groupInput(id, g)
	in.RemoteAddr = addr
	return in
}

func TestNoLinkedHubs(t *testing.T) {
	a, err := New(Options{Hubs: hubList{hub(hubA, 1, false, "")}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Allocate(t.Context(), groupInput("d", &dps.EnrollmentGroup{EnrollmentGroupID: "g"}))
	if errCode(err) != dps.CodeNoHubForAllocation {
		t.Fatalf("err = %v; want 400211", err)
	}
}

func TestNewOptions(t *testing.T) {
	tests := []struct {
		name    string
		opt     Options
		wantErr bool
	}{
		{name: "no hubs", opt: Options{}, wantErr: true},
		{name: "custom default", opt: Options{Hubs: hubList{}, DefaultPolicy: "custom"}, wantErr: true},
		{name: "bogus default", opt: Options{Hubs: hubList{}, DefaultPolicy: "nearest"}, wantErr: true},
		{name: "ARM spelling", opt: Options{Hubs: hubList{}, DefaultPolicy: "GeoLatency"}},
	}
	for _, tt := range tests {
		if _, err := New(tt.opt); (err != nil) != tt.wantErr {
			t.Errorf("%s: err = %v; want error %v", tt.name, err, tt.wantErr)
		}
	}
}

func TestParseNetworkMap(t *testing.T) {
	tests := []struct {
		in      string
		want    []NetworkLocation
		wantErr bool
	}{
		{in: "", want: nil},
		{in: "10.0.0.0/8=westeurope", want: []NetworkLocation{{netip.MustParsePrefix("10.0.0.0/8"), []string{"westeurope"}}}},
		{in: " 10.1.2.3/8 = a , b ;; 192.0.2.7=c", want: []NetworkLocation{
			{netip.MustParsePrefix("10.0.0.0/8"), []string{"a", "b"}},
			{netip.MustParsePrefix("192.0.2.7/32"), []string{"c"}},
		}},
		{in: "10.0.0.0/8", wantErr: true},
		{in: "10.0.0.0/8=", wantErr: true},
		{in: "not-an-ip=x", wantErr: true},
		{in: "10.0.0.0/33=x", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseNetworkMap(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseNetworkMap(%q) err = %v; want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("ParseNetworkMap(%q) = %v; want %v", tt.in, got, tt.want)
			continue
		}
		for i := range got {
			if got[i].Prefix != tt.want[i].Prefix || !slices.Equal(got[i].Locations, tt.want[i].Locations) {
				t.Errorf("ParseNetworkMap(%q)[%d] = %v; want %v", tt.in, i, got[i], tt.want[i])
			}
		}
	}
}
