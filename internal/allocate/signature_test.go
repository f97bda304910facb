package allocate

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store/sqlite"
	"github.com/dpsd/dpsd/internal/webhooksig"
)

// verifyingWebhook answers 200 when the request is signed with one of its
// secrets, 401 otherwise, as examples/contoso-allocator does.
type verifyingWebhook struct {
	mu      sync.Mutex
	secrets []string
	ids     []string
}

func (v *verifyingWebhook) set(secrets ...string) {
	v.mu.Lock()
	v.secrets = secrets
	v.mu.Unlock()
}

func (v *verifyingWebhook) answer(_ int, r *http.Request) (int, string) {
	body, _ := io.ReadAll(r.Body)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ids = append(v.ids, r.Header.Get(webhooksig.HeaderID))
	for _, s := range v.secrets {
		if webhooksig.Verify(s, r.Header.Get(webhooksig.HeaderID), r.Header.Get(webhooksig.HeaderTimestamp),
			r.Header.Get(webhooksig.HeaderSignature), body, time.Now(), 5*time.Minute) == nil {
			return 200, `{"iotHubHostName":"` + hubA + `"}`
		}
	}
	return 401, `bad signature`
}

// TestSignedWebhookRequests: every request carries the Standard Webhooks
// headers; a webhook verifying them accepts dpsd's and refuses a request
// signed with another secret (401 → 400209); a rotation with an overlap
// fails no registration while the webhook moves to the new secret; the
// message id stays the same across retries.
func TestSignedWebhookRequests(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	keeper := webhooksig.NewKeeper(st, nil)
	vw := &verifyingWebhook{}
	ws := newWebhookServer(t, vw.answer)
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, func(o *WebhookOptions) {
		o.Signer, o.Now = keeper, time.Now // the webhook checks the timestamp against its clock
	})
	register := func(id string) error {
		_, err := ts.alloc.Allocate(t.Context(), groupInput(id, customGroup(ws.hookURL(), hubA)))
		return err
	}

	// The webhook has another secret: refused as unauthorized.
	vw.set(webhooksig.NewSecret())
	if err := register("dev-wrong"); errCode(err) != dps.CodeCustomAllocationUnauthorizedAccess {
		t.Fatalf("signed with another secret: %v; want 400209", err)
	}
	// The webhook has dpsd's secret.
	v, err := keeper.Get(t.Context(), true)
	if err != nil {
		t.Fatal(err)
	}
	vw.set(v.Secret)
	if err := register("dev-1"); err != nil {
		t.Fatalf("signed request refused: %v", err)
	}

	// Rotation: until the webhook learns the new secret, and after, every
	// registration succeeds.
	r, err := keeper.Rotate(t.Context(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := register("dev-2"); err != nil {
		t.Errorf("during the overlap, a webhook with the old secret refused: %v", err)
	}
	vw.set(r.Secret)
	if err := register("dev-3"); err != nil {
		t.Errorf("during the overlap, a webhook with the new secret refused: %v", err)
	}
	// Without an overlap the old secret stops signing at once.
	if _, err := keeper.Rotate(t.Context(), -1); err != nil {
		t.Fatal(err)
	}
	if err := register("dev-4"); errCode(err) != dps.CodeCustomAllocationUnauthorizedAccess {
		t.Errorf("after a rotation without overlap, a webhook with the old secret: %v; want 400209", err)
	}
}

// TestSignedRetriesKeepTheID: the attempts of one allocation share their
// webhook-id.
func TestSignedRetriesKeepTheID(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var mu sync.Mutex
	var ids []string
	ws := newWebhookServer(t, func(n int, r *http.Request) (int, string) {
		mu.Lock()
		ids = append(ids, r.Header.Get(webhooksig.HeaderID))
		mu.Unlock()
		if n < 2 {
			return 503, ``
		}
		return 200, `{"iotHubHostName":"` + hubA + `"}`
	})
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, func(o *WebhookOptions) { o.Signer = webhooksig.NewKeeper(st, nil) })
	if _, err := ts.alloc.Allocate(context.Background(), groupInput("dev-1", customGroup(ws.hookURL(), hubA))); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 || ids[0] == "" || ids[0] != ids[1] || ids[1] != ids[2] {
		t.Errorf("webhook-id of the attempts: %q; want one id, three times", ids)
	}
}
