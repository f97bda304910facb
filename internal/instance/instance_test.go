package instance

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

func TestLoadOrCreate(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	// Nodes starting together all end up with the one instance created.
	const n = 8
	got := make([]*Instance, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, err := LoadOrCreate(ctx, st)
			if err != nil {
				t.Error(err)
			}
			got[i] = in
		}()
	}
	wg.Wait()
	for _, in := range got[1:] {
		if in == nil || got[0] == nil || in.IDScope != got[0].IDScope || in.Policies[0].PrimaryKey != got[0].Policies[0].PrimaryKey ||
			in.DeviceKeySecret == "" || in.DeviceKeySecret != got[0].DeviceKeySecret {
			t.Fatalf("instances differ: %+v vs %+v", in, got[0])
		}
	}
	in := got[0]
	if !regexp.MustCompile(`^0ne[0-9A-F]{8}$`).MatchString(in.IDScope) {
		t.Errorf("id scope %q is not 0ne + 8 hex digits", in.IDScope)
	}
	p, ok := in.Policy("ProvisioningServiceOwner")
	if !ok || !p.Has(RightEnrollmentWrite) || !p.Has("registrationstatusread") || p.Has("Nothing") {
		t.Fatalf("owner policy = %+v, %v", p, ok)
	}
	cs, err := sas.ParseConnectionString(in.ServiceConnectionString("dps.example"))
	if err != nil || cs.HostName != "dps.example" || cs.SharedAccessKeyName != OwnerPolicy || cs.SharedAccessKey != p.PrimaryKey {
		t.Fatalf("connection string %+v, %v", cs, err)
	}
}

// TestDeviceKeySecretAdded: an instance created before the device key secret
// existed gets one, once, keeping what the record holds.
func TestDeviceKeySecretAdded(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	old := `{"idScope":"0ne00000001","policies":[{"keyName":"provisioningserviceowner","primaryKey":"a2V5","secondaryKey":"a2V5","rights":["ServiceConfig"]}],"future":1}`
	if _, err := st.Put(ctx, store.Record{Kind: store.KindConfig, ID: recordID, Data: []byte(old)}, store.Condition{MustNotExist: true}); err != nil {
		t.Fatal(err)
	}
	in, err := LoadOrCreate(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if in.IDScope != "0ne00000001" || in.DeviceKeySecret == "" {
		t.Fatalf("instance %+v", in)
	}
	again, err := LoadOrCreate(ctx, st)
	if err != nil || again.DeviceKeySecret != in.DeviceKeySecret {
		t.Fatalf("second start: %+v, %v", again, err)
	}
	rec, err := st.Get(ctx, store.KindConfig, recordID)
	if err != nil || !strings.Contains(string(rec.Data), `"future":1`) {
		t.Fatalf("record %s, %v: unknown members must be kept", rec.Data, err)
	}
}
