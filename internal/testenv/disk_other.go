//go:build !linux

package testenv

import "testing"

// Disk is a small file system of its own; only Linux has one for tests.
type Disk struct{ Dir string }

// SmallDisk skips (fails in CI): full-disk tests need Linux's tmpfs.
func SmallDisk(t testing.TB, size int64) *Disk {
	t.Helper()
	Missing(t, "full-disk tests need Linux")
	return nil
}

// Fill is never reached on other systems.
func (d *Disk) Fill(testing.TB) {}

// Free is never reached on other systems.
func (d *Disk) Free(testing.TB) {}
