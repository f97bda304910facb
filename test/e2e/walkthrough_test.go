package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/testenv"
)

// The Contoso walk-through of spec/README.md: names and test vectors.
const (
	toastersHubName  = "contoso-toasters-hub-1098"
	heatpumpsHubName = "contoso-heatpumps-hub-1098"
	contosoGroup     = "contoso-custom-allocated-devices"
	contosoPayload   = `{"MyDeviceFirmwareVersion":"12.0.2.5","MyDeviceProvisioningVersion":"1.0.0.0"}`

	// The tutorial's group key and the device keys derived from it
	// (spec/README.md step 5).
	vectorGroupKey   = "oiK77Oy7rBw8YB6IS6ukRChAw+Yq6GC61RMrPLSTiOOtdI+XDu0LmLuNm11p+qv2I+adqGUdZHm46zXAQdZoOA=="
	toasterID        = "breakroom499-contoso-tstrsd-007"
	heatpumpID       = "mainbuilding167-contoso-hpsd-088"
	vectorToasterKey = "JC8F96eayuQwwz+PkE7IzjH2lIAjCUnAa61tDigBnSs="
	vectorHeatKey    = "6uejA9PfkQgmYylj8Zerp3kcbeVrGZ172YLa7VSnJzg="

	// cliTimeout bounds one dpsd client command.
	cliTimeout = 90 * time.Second
)

// Addresses for the extra servers the tests start (webhooks): 127.0.6.N,
// and 127.0.7.200 and up for the AMQP suites.
var (
	sideMu   sync.Mutex
	nextSide = map[string]int{"127.0.6": 20, amqpPrefix: 200}
)

// pickSideAddress returns 127.0.6.N:port with nothing listening on it.
func pickSideAddress(t *testing.T, port string) string {
	return pickSideAddressIn(t, "127.0.6", port)
}

// pickSideAddressIn is pickSideAddress in the /24 prefix.
func pickSideAddressIn(t *testing.T, prefix, port string) string {
	t.Helper()
	sideMu.Lock()
	defer sideMu.Unlock()
	first := nextSide[prefix]
	for n := first; n <= 254; n++ {
		addr := net.JoinHostPort(fmt.Sprintf("%s.%d", prefix, n), port)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		l.Close()
		nextSide[prefix] = n + 1
		return addr
	}
	t.Fatalf("no free address %s.%d-254 with port %s free", prefix, first, port)
	return ""
}

// dpsdCLI runs a dpsd client command against srv (through its data
// directory, as a user next to it would) and returns its standard output;
// the test fails when the command does.
func dpsdCLI(t *testing.T, srv *dpsdServer, args ...string) string {
	t.Helper()
	out, errOut, err := dpsdCLIResult(t, srv, args...)
	if err != nil {
		t.Fatalf("dpsd %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// dpsdCLIResult runs a dpsd client command and returns stdout, stderr and
// the error, for commands expected to fail.
func dpsdCLIResult(t *testing.T, srv *dpsdServer, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Binary(t), append(args, "--data-dir", srv.DataDir)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	t.Logf("dpsd %s → %v", strings.Join(args, " "), errOrOK(err))
	return stdout.String(), stderr.String(), err
}

func errOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// decodeJSON decodes a command's JSON output into v.
func decodeJSON(t *testing.T, what, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%s: output is not the expected JSON: %v\n%s", what, err, out)
	}
}

// withNodeData returns a copy of srv whose info file (DPSD_INFO of the node
// tests) is info.json plus key: data, so node tests get what the Go side
// set up without new environment variables.
func withNodeData(t *testing.T, srv *dpsdServer, key string, data any) *dpsdServer {
	t.Helper()
	raw, err := os.ReadFile(srv.InfoPath)
	if err != nil {
		t.Fatal(err)
	}
	var info map[string]any
	if err := json.Unmarshal(raw, &info); err != nil {
		t.Fatal(err)
	}
	info[key] = data
	out, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(srv.DataDir, "info-"+key+".json")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	cp := *srv
	cp.InfoPath = path
	return &cp
}

// allocatorProcess is the Contoso webhook running as its own process.
type allocatorProcess struct {
	URL     string
	LogPath string
}

// startAllocator runs the Contoso allocator on 127.0.6.x, demanding the
// function key code and, when secret is set, dpsd's request signature;
// waits until it accepts connections, and stops it (SIGTERM, then
// SIGKILL) at the end.
func startAllocator(t *testing.T, code, secret string) *allocatorProcess {
	t.Helper()
	bin := testenv.Build(t, "./examples/contoso-allocator")
	addr := pickSideAddress(t, "8090")
	logPath := testenv.Path("contoso-allocator-" + strings.ReplaceAll(addr, ":", "_") + ".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--addr", addr, "--code", code, "--secret", secret)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	testenv.SetChildAttrs(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(testenv.StopTimeout):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(testenv.StartTimeout)
	for {
		if testenv.DialOK(addr) == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("contoso-allocator exited at start:\n%s", testenv.Tail(logPath, 50))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("contoso-allocator not listening on %s after %v", addr, testenv.StartTimeout)
		}
	}
	return &allocatorProcess{URL: "http://" + addr + "/api/allocate?code=" + code, LogPath: logPath}
}

// builtinHub is "dpsd hub create -o json" output: the hub, with the linked
// hub when --link was given.
type builtinHub struct {
	admin.Hub
	LinkedHub *admin.LinkedHub `json:"linkedHub"`
}

// registrationWithLog is "dpsd registration show --allocation-log -o json".
type registrationWithLog struct {
	Registration struct {
		RegistrationID string          `json:"registrationId"`
		Status         string          `json:"status"`
		Substatus      string          `json:"substatus"`
		AssignedHub    string          `json:"assignedHub"`
		DeviceID       string          `json:"deviceId"`
		ErrorCode      int             `json:"errorCode"`
		ErrorMessage   string          `json:"errorMessage"`
		Payload        json.RawMessage `json:"payload"`
	} `json:"registration"`
	AllocationLog struct {
		RegistrationID string `json:"registrationId"`
		Entries        []struct {
			WebhookURL   string          `json:"webhookUrl"`
			Request      json.RawMessage `json:"request"`
			Outcome      string          `json:"outcome"`
			Hub          string          `json:"iotHubHostName"`
			ErrorCode    int             `json:"errorCode"`
			ErrorMessage string          `json:"errorMessage"`
			Attempts     []struct {
				Status      int             `json:"status"`
				Error       string          `json:"error"`
				Body        json.RawMessage `json:"body"`
				WebhookText string          `json:"webhookText"`
			} `json:"attempts"`
		} `json:"entries"`
	} `json:"allocationLog"`
}

// allocationRequest is the part of a webhook request the walk-through
// checks (service-api.md §5.2).
type allocationRequest struct {
	EnrollmentGroup map[string]json.RawMessage `json:"enrollmentGroup"`
	Runtime         struct {
		RegistrationID string          `json:"registrationId"`
		SymmetricKey   json.RawMessage `json:"symmetricKey"`
		Payload        json.RawMessage `json:"payload"`
	} `json:"deviceRuntimeContext"`
	LinkedHubs []string `json:"linkedHubs"`
}

// contosoDevice is one device of the walk-through: where it must land and
// with which twin.
type contosoDevice struct {
	ID      string            `json:"id"`
	Key     string            `json:"key"`
	Hub     string            `json:"hub"` // built-in hub name
	Tags    map[string]string `json:"tags"`
	Desired map[string]string `json:"desired"`
}

var (
	toasterTwinTags    = map[string]string{"deviceType": "toaster"}
	toasterTwinDesired = map[string]string{"state": "ready", "darknessSetting": "medium"}
	heatTwinTags       = map[string]string{"deviceType": "heatpump"}
	heatTwinDesired    = map[string]string{"state": "on", "temperatureSetting": "65"}
)

// TestContosoWalkthrough is spec/README.md's reference scenario, steps 1–9,
// with real processes: dpsd serve, two built-in hubs created and linked
// with the CLI, the Contoso allocator process, the enrollment group made
// with the CLI, device keys from "dpsd compute-device-key", devices
// provisioned with "dpsd device provision" here and with the official Node
// SDKs (HTTPS, MQTT) in walkthrough.test.js, which also connects them to
// their hubs. The outcome table (step 8) is TestCustomAllocationOutcomes.
func TestContosoWalkthrough(t *testing.T) {
	t.Parallel()
	runContosoWalkthrough(t, false)
}

// TestContosoWalkthroughPolicy is the same walk-through with the Contoso
// policy evaluated inside dpsd (examples/policies/contoso.cel, created with
// "dpsd allocation-policy create") instead of the webhook: the group's
// webhook URL is policy:contoso, and every device lands where the webhook
// would have put it, with the same twin.
func TestContosoWalkthroughPolicy(t *testing.T) {
	t.Parallel()
	runContosoWalkthrough(t, true)
}

func runContosoWalkthrough(t *testing.T, viaPolicy bool) {
	nodeTool(t)

	// Step 1: dpsd with embedded defaults (the harness also links a hub
	// of its own; the group below names the Contoso hubs only).
	srv := startServer(t)

	// Step 2: two built-in hubs, on dpsd's own address and ports (no
	// address, port or privilege of their own); one linked by "hub
	// create --link", the other by "linked-hub create" with its
	// connection string.
	hubs := map[string]builtinHub{}
	var toasters, heatpumps builtinHub
	decodeJSON(t, "hub create --link", dpsdCLI(t, srv, "hub", "create", toastersHubName,
		"--link", "--allocation-weight", "2", "-o", "json"), &toasters)
	if toasters.LinkedHub == nil || toasters.LinkedHub.Name != toasters.HostName || toasters.LinkedHub.AllocationWeight != 2 ||
		!toasters.LinkedHub.ApplyAllocationPolicy || strings.Contains(toasters.LinkedHub.ConnectionString, toasters.ConnectionString) {
		t.Fatalf("hub create --link: linked hub %+v for hub %+v (want its host name, weight 2, policy applied, key redacted)", toasters.LinkedHub, toasters)
	}
	decodeJSON(t, "hub create", dpsdCLI(t, srv, "hub", "create", heatpumpsHubName, "-o", "json"), &heatpumps)
	if heatpumps.LinkedHub != nil {
		t.Errorf("hub create without --link linked the hub: %+v", heatpumps.LinkedHub)
	}
	dpsdCLI(t, srv, "linked-hub", "create", "--connection-string", heatpumps.ConnectionString)
	for _, h := range []builtinHub{toasters, heatpumps} {
		if !h.Running || !h.Shared || h.Address != srv.IP || h.HostName != h.Name+".azure-devices.internal" || h.HostsLine != h.Address+" "+h.HostName {
			t.Fatalf("hub %s: %+v (want it running on dpsd's address %s)", h.Name, h, srv.IP)
		}
		hubs[h.Name] = h
	}
	// One hosts-file line makes every hub's name resolve.
	var lines []string
	decodeJSON(t, "hub hosts-line", dpsdCLI(t, srv, "hub", "hosts-line", "-o", "json"), &lines)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], srv.IP+" ") || !strings.Contains(lines[0], " "+toasters.HostName) || !strings.Contains(lines[0], " "+heatpumps.HostName) {
		t.Errorf("hub hosts-line = %q, want one line for %s naming both hubs", lines, srv.IP)
	}
	// The table form says how to make the host name resolve.
	if out := dpsdCLI(t, srv, "hub", "show", toastersHubName); !strings.Contains(out, toasters.HostsLine) {
		t.Errorf("hub show does not print the hosts-file line %q:\n%s", toasters.HostsLine, out)
	}
	var linked []struct {
		Name                  string `json:"name"`
		AllocationWeight      int    `json:"allocationWeight"`
		ApplyAllocationPolicy bool   `json:"applyAllocationPolicy"`
	}
	decodeJSON(t, "linked-hub list", dpsdCLI(t, srv, "linked-hub", "list", "-o", "json"), &linked)
	names := map[string]int{}
	for _, l := range linked {
		names[l.Name] = l.AllocationWeight
	}
	if w, ok := names[toasters.HostName]; !ok || w != 2 {
		t.Errorf("linked hubs %+v: want %s with weight 2", linked, toasters.HostName)
	}
	if w, ok := names[heatpumps.HostName]; !ok || w != 1 {
		t.Errorf("linked hubs %+v: want %s with weight 1", linked, heatpumps.HostName)
	}

	// Step 3: the Contoso allocator, with a function key as an Azure
	// Function would have (so the URL's query string must be masked).
	// With viaPolicy, the same decisions as an in-process policy.
	var alloc *allocatorProcess
	if viaPolicy {
		src := filepath.Join(testenv.RepoRoot(t), "examples", "policies", "contoso.cel")
		out := dpsdCLI(t, srv, "allocation-policy", "create", "contoso", "--file", src, "--description", "the tutorial's Contoso policy")
		if !strings.Contains(out, "policy:contoso") {
			t.Errorf("allocation-policy create:\n%s", out)
		}
		alloc = &allocatorProcess{URL: "policy:contoso"}
	} else {
		// The webhook verifies dpsd's signature (dpsd webhook-secret).
		var signing struct {
			Scheme string `json:"scheme"`
			Secret string `json:"secret"`
		}
		decodeJSON(t, "webhook-secret show", dpsdCLI(t, srv, "webhook-secret", "show", "-o", "json"), &signing)
		if signing.Scheme != "standard-webhooks-v1" || signing.Secret != "" {
			t.Errorf("webhook-secret show without --show-secrets: %+v; want the scheme and no secret", signing)
		}
		decodeJSON(t, "webhook-secret show --show-secrets", dpsdCLI(t, srv, "webhook-secret", "show", "--show-secrets", "-o", "json"), &signing)
		if !strings.HasPrefix(signing.Secret, "whsec_") {
			t.Fatalf("webhook-secret show --show-secrets: %+v", signing)
		}
		alloc = startAllocator(t, "walkthrough-function-key", signing.Secret)
	}

	// Step 4: the enrollment group, symmetric keys generated by dpsd.
	dpsdCLI(t, srv, "enrollment-group", "create", "--enrollment-group-id", contosoGroup,
		"--attestation-type", "symmetrickey", "--allocation-policy", "custom",
		"--webhook-url", alloc.URL, "--iot-hubs", toasters.HostName+","+heatpumps.HostName, "-o", "json")
	var group struct {
		ProvisioningStatus string `json:"provisioningStatus"`
		AllocationPolicy   string `json:"allocationPolicy"`
		IoTHubs            []string
		Attestation        struct {
			SymmetricKey struct {
				PrimaryKey   string `json:"primaryKey"`
				SecondaryKey string `json:"secondaryKey"`
			} `json:"symmetricKey"`
		} `json:"attestation"`
	}
	decodeJSON(t, "enrollment-group show --show-keys",
		dpsdCLI(t, srv, "enrollment-group", "show", "--enrollment-group-id", contosoGroup, "--show-keys", "-o", "json"), &group)
	groupKey := group.Attestation.SymmetricKey.PrimaryKey
	if groupKey == "" || group.Attestation.SymmetricKey.SecondaryKey == "" || group.ProvisioningStatus != "enabled" || group.AllocationPolicy != "custom" {
		t.Fatalf("group as shown: %+v", group)
	}

	// Step 5: derived keys. The spec's vectors first, then the keys of
	// this run's devices, by --key and by --enrollment-group-id.
	for id, want := range map[string]string{toasterID: vectorToasterKey, heatpumpID: vectorHeatKey} {
		if got := strings.TrimSpace(dpsdCLI(t, srv, "compute-device-key", "--key", vectorGroupKey, "--registration-id", id)); got != want {
			t.Errorf("compute-device-key %s with the tutorial's key = %q, want %q", id, got, want)
		}
	}
	deviceKey := func(id string) string {
		byKey := strings.TrimSpace(dpsdCLI(t, srv, "compute-device-key", "--key", groupKey, "--registration-id", id))
		byGroup := strings.TrimSpace(dpsdCLI(t, srv, "compute-device-key", "--enrollment-group-id", contosoGroup, "--registration-id", id))
		if byKey == "" || byKey != byGroup {
			t.Fatalf("compute-device-key %s: --key gives %q, --enrollment-group-id gives %q", id, byKey, byGroup)
		}
		return byKey
	}
	toaster := func(id string) contosoDevice {
		return contosoDevice{ID: id, Key: deviceKey(id), Hub: toastersHubName, Tags: toasterTwinTags, Desired: toasterTwinDesired}
	}
	heatpump := func(id string) contosoDevice {
		return contosoDevice{ID: id, Key: deviceKey(id), Hub: heatpumpsHubName, Tags: heatTwinTags, Desired: heatTwinDesired}
	}
	// The canonical pair goes through the SDK over HTTPS, a second pair
	// over MQTT, a third through dpsd's simulator.
	sdkHTTP := []contosoDevice{toaster(toasterID), heatpump(heatpumpID)}
	sdkMQTT := []contosoDevice{toaster("breakroom500-contoso-tstrsd-007"), heatpump("mainbuilding168-contoso-hpsd-088")}
	simulated := []contosoDevice{toaster("breakroom501-contoso-tstrsd-007"), heatpump("mainbuilding169-contoso-hpsd-088")}
	const stranger = "lobby-contoso-fridge-001"

	// Step 6 with dpsd's simulator: the toaster derives its key from the
	// group key over MQTT, the heat pump uses its derived key over HTTPS.
	for i, d := range simulated {
		args := []string{"device", "provision", "--registration-id", d.ID, "--payload", contosoPayload}
		if i == 0 {
			args = append(args, "--group-key", groupKey, "--transport", "mqtt")
		} else {
			args = append(args, "--symmetric-key", d.Key, "--transport", "https")
		}
		out := dpsdCLI(t, srv, args...)
		checkSimulatorOutput(t, out, hubs[d.Hub].HostName, d.ID)
	}
	// A device the webhook does not recognize fails, exit status 1.
	out, errOut, err := dpsdCLIResult(t, srv, "device", "provision", "--registration-id", stranger, "--group-key", groupKey, "--payload", contosoPayload)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(errOut, "errorCode 400207") {
		t.Errorf("device provision of %s: exit %v, want 1 with errorCode 400207\nstdout:\n%s\nstderr:\n%s", stranger, err, out, errOut)
	}
	// The stranger is registered again by the SDK in node; remove its
	// record so that the node test sees a first registration.
	dpsdCLI(t, srv, "registration", "delete", "--registration-id", stranger)

	// Steps 6, 7 and the non-Contoso failure with the official SDKs.
	nodeData := map[string]any{
		"groupId":       contosoGroup,
		"groupKey":      groupKey,
		"payload":       json.RawMessage(contosoPayload),
		"vectorKey":     vectorGroupKey,
		"vectors":       map[string]string{toasterID: vectorToasterKey, heatpumpID: vectorHeatKey},
		"hubs":          hubs,
		"http":          sdkHTTP,
		"mqtt":          sdkMQTT,
		"simulated":     simulated,
		"stranger":      stranger,
		"strangerError": "Unrecognized device registration.",
		"policy":        viaPolicy,
	}
	runNodeTests(t, withNodeData(t, srv, "walkthrough", nodeData), "walkthrough.test.js")

	// After the node tests: each hub holds exactly its devices, each with
	// the twin the webhook chose ("dpsd hub twin show", "hub device list").
	all := slices.Concat(sdkHTTP, sdkMQTT, simulated)
	t.Run("each hub holds its devices with the webhook's twin", func(t *testing.T) {
		want := map[string][]string{}
		for _, d := range all {
			want[d.Hub] = append(want[d.Hub], d.ID)
			checkHubTwin(t, srv, d)
		}
		for name := range maps.Keys(hubs) {
			var devs []struct {
				DeviceID string `json:"deviceId"`
			}
			decodeJSON(t, "hub device list", dpsdCLI(t, srv, "hub", "device", "list", "--hub-name", name, "-o", "json"), &devs)
			var got []string
			for _, d := range devs {
				got = append(got, d.DeviceID)
			}
			slices.Sort(got)
			slices.Sort(want[name])
			if !slices.Equal(got, want[name]) {
				t.Errorf("hub %s holds %v, want %v", name, got, want[name])
			}
		}
	})

	// Step 9: what the operator sees — the registration and the webhook
	// request and answer (dpsd registration show --allocation-log).
	t.Run("registration show --allocation-log shows the full webhook request", func(t *testing.T) {
		for _, d := range all {
			checkAllocationLog(t, srv, d, hubs[d.Hub].HostName, []string{toasters.HostName, heatpumps.HostName}, alloc.URL)
		}
		var r registrationWithLog
		decodeJSON(t, "registration show --allocation-log", dpsdCLI(t, srv, "registration", "show", "--registration-id", stranger, "--allocation-log", "-o", "json"), &r)
		if r.Registration.Status != "failed" || r.Registration.ErrorCode != 400207 {
			t.Errorf("%s: registration %+v, want failed with 400207", stranger, r.Registration)
		}
		entries := r.AllocationLog.Entries
		if len(entries) == 0 || len(entries[len(entries)-1].Attempts) == 0 {
			t.Fatalf("%s: no allocation log: %+v", stranger, r.AllocationLog)
		}
		last := entries[len(entries)-1]
		a := last.Attempts[len(last.Attempts)-1]
		if viaPolicy {
			if last.Outcome != "failed" || last.ErrorCode != 400207 || !strings.Contains(a.Error, "refused the device: Unrecognized device registration.") {
				t.Errorf("%s: allocation log entry %+v, want failed 400207 with the policy's reason", stranger, last)
			}
		} else if last.Outcome != "failed" || last.ErrorCode != 400207 || a.Status != 400 || !strings.Contains(a.WebhookText, "Unrecognized device registration.") {
			t.Errorf("%s: allocation log entry %+v, want failed 400207 after a 400 saying \"Unrecognized device registration.\"", stranger, last)
		}
		// The table form prints the same for people.
		table := dpsdCLI(t, srv, "registration", "show", "--registration-id", toasterID, "--allocation-log")
		wantURL := "?****"
		if viaPolicy {
			wantURL = "policy:contoso"
		}
		for _, want := range []string{"Allocation log:", "assigned to " + toasters.HostName, `"MyDeviceFirmwareVersion":"12.0.2.5"`, wantURL} {
			if !strings.Contains(table, want) {
				t.Errorf("registration show --allocation-log (table) lacks %q:\n%s", want, table)
			}
		}
	})

	// dpsd doctor: every record and its hub identity agree (README).
	t.Run("doctor finds no problem", func(t *testing.T) {
		var rep struct {
			Registrations int            `json:"registrations"`
			Counts        map[string]int `json:"counts"`
			HubsListed    []string       `json:"hubsListed"`
		}
		decodeJSON(t, "doctor", dpsdCLI(t, srv, "doctor", "--fail-on-problems", "-o", "json"), &rep)
		if rep.Registrations < len(all) || len(rep.Counts) != 0 || !slices.Contains(rep.HubsListed, toasters.HostName) {
			t.Errorf("doctor: %+v, want every registration checked, no problem, the toasters hub listed", rep)
		}
		if out := dpsdCLI(t, srv, "doctor"); !strings.Contains(out, "No problems") {
			t.Errorf("doctor (table):\n%s", out)
		}
	})

	// The allocator's own log has every request it answered.
	t.Run("the allocator logged every request", func(t *testing.T) {
		if viaPolicy {
			t.Skip("no allocator process: the policy runs inside dpsd")
		}
		logText, err := os.ReadFile(alloc.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range append(all, contosoDevice{ID: stranger}) {
			if !strings.Contains(string(logText), d.ID) {
				t.Errorf("the allocator's log never mentions %s:\n%s", d.ID, logText)
			}
		}
		if !strings.Contains(string(logText), "Unrecognized device registration.") {
			t.Errorf("the allocator's log does not show it refused %s", stranger)
		}
	})
}

// checkSimulatorOutput checks "dpsd device provision"'s progress lines.
func checkSimulatorOutput(t *testing.T, out, hubHost, deviceID string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "Provisioning API Version: ") || lines[1] != "Registering Device" {
		t.Errorf("device provision output starts wrong:\n%s", out)
	}
	if !strings.Contains(out, "Provisioning Status: PROV_DEVICE_REG_STATUS_CONNECTED") {
		t.Errorf("device provision output lacks the connected line:\n%s", out)
	}
	want := fmt.Sprintf("Registration Information received from service: %s, deviceId: %s", hubHost, deviceID)
	if !slices.Contains(lines, want) {
		t.Errorf("device provision output lacks %q:\n%s", want, out)
	}
}

// checkHubTwin checks a device's twin in its hub with "dpsd hub twin show",
// and that its identity holds the derived key ("hub device show").
func checkHubTwin(t *testing.T, srv *dpsdServer, d contosoDevice) {
	t.Helper()
	var twin struct {
		DeviceID   string            `json:"deviceId"`
		Tags       map[string]string `json:"tags"`
		Properties struct {
			Desired map[string]any `json:"desired"`
		} `json:"properties"`
	}
	decodeJSON(t, "hub twin show", dpsdCLI(t, srv, "hub", "twin", "show", "--hub-name", d.Hub, "--device-id", d.ID), &twin)
	if twin.DeviceID != d.ID || !maps.Equal(twin.Tags, d.Tags) {
		t.Errorf("%s in %s: twin tags %v, want %v", d.ID, d.Hub, twin.Tags, d.Tags)
	}
	for k, v := range d.Desired {
		if twin.Properties.Desired[k] != v {
			t.Errorf("%s in %s: desired %s = %v, want %q", d.ID, d.Hub, k, twin.Properties.Desired[k], v)
		}
	}
	var dev struct {
		Authentication struct {
			SymmetricKey struct {
				PrimaryKey string `json:"primaryKey"`
			} `json:"symmetricKey"`
		} `json:"authentication"`
	}
	decodeJSON(t, "hub device show", dpsdCLI(t, srv, "hub", "device", "show", "--hub-name", d.Hub, "--device-id", d.ID, "-o", "json"), &dev)
	if dev.Authentication.SymmetricKey.PrimaryKey != d.Key {
		t.Errorf("%s in %s: primary key %q, want the derived key %q", d.ID, d.Hub, dev.Authentication.SymmetricKey.PrimaryKey, d.Key)
	}
}

// checkAllocationLog checks that the webhook got the full request for a
// device (service-api.md §5.2): the enrollment group without keys and with
// the webhook URL's query masked, the runtime context with the payload,
// and both linked hubs; and that the registration is assigned to hubHost.
func checkAllocationLog(t *testing.T, srv *dpsdServer, d contosoDevice, hubHost string, linkedHubs []string, webhookURL string) {
	t.Helper()
	var r registrationWithLog
	decodeJSON(t, "registration show --allocation-log",
		dpsdCLI(t, srv, "registration", "show", "--registration-id", d.ID, "--allocation-log", "-o", "json"), &r)
	if r.Registration.Status != "assigned" || r.Registration.AssignedHub != hubHost || r.Registration.DeviceID != d.ID {
		t.Errorf("%s: registration %+v, want assigned to %s", d.ID, r.Registration, hubHost)
	}
	if len(r.AllocationLog.Entries) == 0 {
		t.Fatalf("%s: no allocation log entries", d.ID)
	}
	e := r.AllocationLog.Entries[len(r.AllocationLog.Entries)-1]
	masked := webhookURL
	if i := strings.Index(webhookURL, "?"); i >= 0 {
		masked = webhookURL[:i] + "?****"
	}
	if e.Outcome != "assigned" || e.Hub != hubHost || e.WebhookURL != masked || len(e.Attempts) != 1 || e.Attempts[0].Status != 200 {
		t.Errorf("%s: log entry outcome %s hub %s url %s attempts %+v; want assigned to %s by %s in one 200",
			d.ID, e.Outcome, e.Hub, e.WebhookURL, e.Attempts, hubHost, masked)
	}
	var req allocationRequest
	if err := json.Unmarshal(e.Request, &req); err != nil {
		t.Fatalf("%s: logged request is not JSON: %v\n%s", d.ID, err, e.Request)
	}
	var gid string
	json.Unmarshal(req.EnrollmentGroup["enrollmentGroupId"], &gid)
	if gid != contosoGroup {
		t.Errorf("%s: request enrollmentGroup id %q, want %s", d.ID, gid, contosoGroup)
	}
	if att := string(req.EnrollmentGroup["attestation"]); strings.Contains(att, "Key\":\"") || !strings.Contains(att, "symmetricKey") {
		t.Errorf("%s: the webhook got attestation %s; want the type without keys", d.ID, att)
	}
	var def struct {
		WebhookURL string `json:"webhookUrl"`
	}
	json.Unmarshal(req.EnrollmentGroup["customAllocationDefinition"], &def)
	if def.WebhookURL != masked {
		t.Errorf("%s: the webhook got its own URL as %q, want %q", d.ID, def.WebhookURL, masked)
	}
	if req.Runtime.RegistrationID != d.ID || !jsonEqual(req.Runtime.Payload, []byte(contosoPayload)) || string(req.Runtime.SymmetricKey) != "{}" {
		t.Errorf("%s: deviceRuntimeContext %+v (payload %s), want the id, symmetricKey {} and the payload", d.ID, req.Runtime, req.Runtime.Payload)
	}
	got, want := slices.Clone(req.LinkedHubs), slices.Clone(linkedHubs)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: linkedHubs %v, want %v", d.ID, req.LinkedHubs, linkedHubs)
	}
}

// jsonEqual compares two JSON documents by value.
func jsonEqual(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}
