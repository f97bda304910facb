package testenv

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// Disk is a small file system of its own, for tests of what dpsd does
// when the disk fills up: a real ENOSPC from the kernel, not a fake.
type Disk struct {
	// Dir is the mount point; everything below it shares the disk's space.
	Dir    string
	filler string
}

// SmallDisk mounts a tmpfs of size bytes on a new directory and unmounts
// it when the test ends (after the test's own cleanups registered later
// have run). Mounting needs root, which CI has; elsewhere the test skips.
func SmallDisk(t testing.TB, size int64) *Disk {
	t.Helper()
	dir := t.TempDir()
	opts := "size=" + strconv.FormatInt(size, 10) + ",mode=0700"
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		Missing(t, "mount a tmpfs for a full-disk test: %v (needs root)", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return &Disk{Dir: dir, filler: filepath.Join(dir, "filler")}
}

// Fill takes every free byte of the disk.
func (d *Disk) Fill(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(d.filler, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for range 1 << 20 { // bounded: 64 GiB
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatalf("fill %s: %v", d.Dir, err)
		}
	}
	t.Fatalf("fill %s: never full", d.Dir)
}

// Free gives back what Fill took.
func (d *Disk) Free(t testing.TB) {
	t.Helper()
	if err := os.Remove(d.filler); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}
