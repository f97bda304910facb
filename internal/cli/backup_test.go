package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/server"
)

// runNode serves dataDir on host until stop is called.
func runNode(t *testing.T, dataDir, host string) (info *server.Info, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.Start(ctx, server.Config{
		DataDir: dataDir, HostName: "localhost",
		HTTPSAddr: host + ":0", MQTTAddr: host + ":0", AMQPAddr: host + ":0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		cancel()
		t.Fatalf("start dpsd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s.Info(), stop
}

// TestBackupRestoreUnderLoad: a backup taken while enrollments are being
// written holds every one written before it started; it checks; restore
// refuses a running node and brings the data back on a stopped one.
func TestBackupRestoreUnderLoad(t *testing.T) {
	t.Setenv(envConnectionString, "")
	t.Setenv(envDataDir, "")
	dataDir := t.TempDir()
	info, stop := runNode(t, dataDir, "127.0.12.7")
	c, err := (&connectFlags{dataDir: dataDir}).client()
	if err != nil {
		t.Fatal(err)
	}

	// Load: four writers creating enrollments until told to stop.
	var created sync.Map // id → true once the service acknowledged it
	var n atomic.Int64
	loadCtx, endLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; loadCtx.Err() == nil; i++ {
				id := fmt.Sprintf("load-%d-%d", w, i)
				if _, err := c.CreateEnrollment(context.Background(), &dps.IndividualEnrollment{RegistrationID: id,
					Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}); err == nil {
					created.Store(id, true)
					n.Add(1)
				}
			}
		}()
	}
	for n.Load() < 50 {
		time.Sleep(5 * time.Millisecond)
	}
	// Every enrollment acknowledged before the backup starts must be in it.
	var before []string
	created.Range(func(k, _ any) bool { before = append(before, k.(string)); return true })
	file := filepath.Join(t.TempDir(), "dpsd-backup.db")
	out, err := runCLI(t, "backup", "--data-dir", dataDir, "-f", file)
	endLoad()
	wg.Wait()
	if err != nil || !strings.Contains(out, "records:") {
		t.Fatalf("dpsd backup under load: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "backup", "--data-dir", dataDir, "-f", file); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("backup over an existing file: %v", err)
	}
	if out, err := runCLI(t, "restore", "--check-only", "-f", file); err != nil || !strings.Contains(out, "checks") {
		t.Errorf("restore --check-only: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "restore", "--data-dir", dataDir, "-f", file); err == nil || !strings.Contains(err.Error(), "running") {
		t.Errorf("restore into a running node: %v", err)
	}

	// More writes after the backup, which the restore takes back.
	if _, err := c.CreateEnrollment(context.Background(), &dps.IndividualEnrollment{RegistrationID: "after-backup",
		Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}); err != nil {
		t.Fatal(err)
	}
	stop()
	if out, err := runCLI(t, "restore", "--data-dir", dataDir, "-f", file); err != nil || !strings.Contains(out, "Restored") {
		t.Fatalf("restore: %v\n%s", err, out)
	}

	info2, _ := runNode(t, dataDir, "127.0.12.8")
	if info2.IDScope != info.IDScope {
		t.Errorf("ID scope after restore %s, want %s", info2.IDScope, info.IDScope)
	}
	c2, err := (&connectFlags{dataDir: dataDir}).client()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range before {
		if _, err := c2.GetEnrollment(context.Background(), id); err != nil {
			t.Errorf("enrollment %s, acknowledged before the backup, after restore: %v", id, err)
		}
	}
	if _, err := c2.GetEnrollment(context.Background(), "after-backup"); err == nil {
		t.Error("an enrollment written after the backup survived the restore")
	}
	t.Logf("%d enrollments acknowledged before the backup, %d in all", len(before), n.Load())

	// A file that is not a dpsd database does not check.
	bad := filepath.Join(t.TempDir(), "bad.db")
	if _, err := runCLI(t, "backup", "--data-dir", t.TempDir(), "-f", bad); err == nil || !strings.Contains(err.Error(), "pg_dump") {
		t.Errorf("backup of a directory without a database: %v", err)
	}
}
