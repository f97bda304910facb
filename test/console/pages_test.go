package console

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// signIn signs the browser in with a connection string.
func signIn(t *testing.T, b *browser, origin, cs string) {
	t.Helper()
	b.run(t, "sign in",
		chromedp.Navigate(origin+"/console/"),
		chromedp.WaitVisible(chromedp.CSS("#signin-form")),
		chromedp.SendKeys(chromedp.CSS("#connection-string"), cs),
		chromedp.Click(chromedp.CSS("#sign-in")),
		chromedp.WaitVisible(chromedp.CSS("#id-scope")))
}

// TestConsolePages covers the pages TestConsole passes by: paging and
// search of groups, an individual enrollment's life (create, edit, delete),
// a CA certificate's upload and proof of possession, a linked hub's weight
// and a built-in hub's page.
func TestConsolePages(t *testing.T) {
	n := startNode(t, false)
	b := newBrowser(t)
	origin := n.Info.HTTPSEndpoint
	signIn(t, b, origin, n.Info.ServiceConnectionString)
	// Dialogs answer yes (confirm) and 5 (prompt) without blocking.
	answerDialogs := func() {
		eval[bool](t, b, `(window.confirm = () => true, window.prompt = () => '5', true)`)
	}

	// Thirty groups: two pages of 25, and a search across both.
	for i := range 30 {
		id := fmt.Sprintf("grp-%03d", i)
		service(t, n, "PUT", "/enrollmentGroups/"+id, `{"enrollmentGroupId":"`+id+`","attestation":{"type":"symmetricKey"}}`, 200)
	}
	b.run(t, "open groups", chromedp.Navigate(origin+"/console/#/groups"))
	b.waitText(t, "#results", "grp-024")
	if rows := eval[int](t, b, `document.querySelectorAll('#results tbody tr').length`); rows != 25 {
		t.Errorf("first page has %d rows, want 25", rows)
	}
	b.run(t, "next page", chromedp.Click(chromedp.CSS("#next-page")))
	b.waitText(t, "#results", "grp-029")
	b.waitText(t, "#results", "Page 2")
	if rows := eval[int](t, b, `document.querySelectorAll('#results tbody tr').length`); rows != 5 {
		t.Errorf("second page has %d rows, want 5", rows)
	}
	b.run(t, "search", chromedp.SetValue(chromedp.CSS("#search"), "grp-01"), chromedp.Click(chromedp.CSS("#search-button")))
	b.waitText(t, "#results", "10 matches")

	// An individual enrollment: create, disable, delete.
	b.run(t, "create an individual enrollment",
		chromedp.Navigate(origin+"/console/#/enrollments/new"),
		chromedp.WaitVisible(chromedp.CSS("#enrollment-form")),
		chromedp.SendKeys(chromedp.CSS("#id"), "ind-1"),
		chromedp.SendKeys(chromedp.CSS("#device-id"), "device-ind-1"),
		chromedp.Click(chromedp.CSS("#save")),
		chromedp.WaitVisible(chromedp.CSS("#show-keys")))
	b.waitText(t, "main", "device-ind-1")
	b.run(t, "disable it",
		chromedp.Click(chromedp.CSS("#edit")),
		chromedp.WaitVisible(chromedp.CSS("#enabled")),
		chromedp.Click(chromedp.CSS("#enabled")),
		chromedp.Click(chromedp.CSS("#save")),
		chromedp.WaitVisible(chromedp.CSS("#show-keys")))
	b.waitText(t, "main", "disabled")
	answerDialogs()
	b.run(t, "delete it", chromedp.Click(chromedp.CSS("#delete")))
	b.waitText(t, "#results", "None yet.")

	// A CA certificate: upload, then prove possession of its key.
	caPEM, sign := newCA(t)
	b.run(t, "upload a CA certificate",
		chromedp.Navigate(origin+"/console/#/certificates"),
		chromedp.WaitVisible(chromedp.CSS("#cert-name")),
		chromedp.SendKeys(chromedp.CSS("#cert-name"), "fleet-root"),
		chromedp.SetValue(chromedp.CSS("#cert-pem"), caPEM),
		chromedp.Click(chromedp.CSS("#upload-cert")))
	b.waitText(t, "main table", "unverified")
	b.run(t, "ask for a verification code", chromedp.Click(chromedp.CSS("button.prove")), chromedp.WaitVisible(chromedp.CSS("#verification-code")))
	code := b.text(t, "#verification-code")
	b.run(t, "verify", chromedp.SetValue(chromedp.CSS("#verification-pem"), sign(code)), chromedp.Click(chromedp.CSS("#verify-cert")))
	b.waitText(t, "#cert-message", "fleet-root is verified")
	b.screenshot(t, "certificates")

	// The linked hub's weight.
	b.run(t, "open linked hubs", chromedp.Navigate(origin+"/console/#/linkedhubs"))
	b.waitText(t, "#linked-hubs", n.hub)
	answerDialogs()
	b.run(t, "change the weight", chromedp.Click(chromedp.CSS("button.change-weight")))
	b.waitText(t, "#linked-hubs td[data-label=Weight]", "5")
	// Its health, as the node's checks found it (the page reads it anew
	// after every change).
	b.run(t, "reload linked hubs", chromedp.Reload())
	b.waitText(t, "#linked-hubs td[data-label=Health] .badge.healthy", "healthy")
	b.waitText(t, "#linked-hubs td[data-label=Health] .health-note", "checked")
	// Its key, rotated in place: a key the hub refuses is not saved.
	checkProblems(t, b)
	eval[bool](t, b, fmt.Sprintf(`(window.prompt = () => %q, true)`, strings.Replace(n.hubCS, "SharedAccessKey=", "SharedAccessKey=AAAA", 1)))
	b.run(t, "rotate to a wrong key", chromedp.Click(chromedp.CSS("button.rotate-key")))
	b.waitText(t, "main .error", "old one stays")
	checkProblems(t, b, "status of 400")
	eval[bool](t, b, fmt.Sprintf(`(window.prompt = () => %q, true)`, n.hubCS))
	b.run(t, "rotate the key", chromedp.Click(chromedp.CSS("button.rotate-key")))
	b.waitText(t, "main .ok", "was rotated")

	// An allocation policy: refused while it does not compile (the
	// compiler's line and column shown), created, edited, deleted.
	b.run(t, "open allocation policies", chromedp.Navigate(origin+"/console/#/policies"))
	b.waitText(t, "#policies", "No allocation policy yet.")
	b.run(t, "new policy",
		chromedp.Click(chromedp.CSS("#new-policy")),
		chromedp.WaitVisible(chromedp.CSS("#policy-form")),
		chromedp.SendKeys(chromedp.CSS("#ap-name"), "first-hub"),
		chromedp.SetValue(chromedp.CSS("#policy-expr"), `{"iotHubHostName": linkedHubs[0]`),
		chromedp.Click(chromedp.CSS("#save-policy")))
	b.waitText(t, "#policy-message .error", "line 1, column")
	checkProblems(t, b, "status of 400")
	b.run(t, "fix and save",
		chromedp.SetValue(chromedp.CSS("#policy-expr"), `{"iotHubHostName": linkedHubs[0]}`),
		chromedp.Click(chromedp.CSS("#save-policy")))
	b.waitText(t, "#policy-expression", "linkedHubs[0]}")
	b.run(t, "edit it",
		chromedp.Click(chromedp.CSS("#edit-policy")),
		chromedp.WaitVisible(chromedp.CSS("#policy-form")),
		chromedp.SendKeys(chromedp.CSS("#policy-description"), "the first linked hub"),
		chromedp.Click(chromedp.CSS("#save-policy")))
	b.waitText(t, "main .panel", "the first linked hub")
	b.run(t, "list", chromedp.Navigate(origin+"/console/#/policies"))
	b.waitText(t, "#policies", "policy:first-hub")
	// The service API sees what the console saved.
	service(t, n, "GET", "/dpsd/allocationPolicies/first-hub", "", 200)
	answerDialogs()
	b.run(t, "delete it",
		chromedp.Click(chromedp.CSS(`a[href="#/policies/first-hub"]`)),
		chromedp.WaitVisible(chromedp.CSS("#delete-policy")),
		chromedp.Click(chromedp.CSS("#delete-policy")))
	b.waitText(t, "#policies", "No allocation policy yet.")
	service(t, n, "GET", "/dpsd/allocationPolicies/first-hub", "", 404)

	// The built-in hub's page.
	b.run(t, "open built-in hubs", chromedp.Navigate(origin+"/console/#/hubs"))
	b.run(t, "open the hub", chromedp.Click(chromedp.CSS(`a[href="#/hubs/console-hub"]`)))
	b.waitText(t, "main", "Live telemetry")
	b.waitText(t, "main", n.hub)

	checkProblems(t, b)
}

// newCA makes a CA certificate (PEM) and a func that signs a verification
// certificate for a code with its key.
func newCA(t *testing.T) (string, func(code string) string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "console test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	sign := func(code string) string {
		leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		leaf := &x509.Certificate{
			SerialNumber: big.NewInt(2),
			Subject:      pkix.Name{CommonName: code},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
		}
		d, err := x509.CreateCertificate(rand.Reader, leaf, ca, &leafKey.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d}))
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), sign
}
