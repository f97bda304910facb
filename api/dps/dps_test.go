package dps

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorStatus(t *testing.T) {
	tests := []struct {
		code, status int
	}{
		{CodeInvalidArgument, 400},
		{CodeCustomAllocationFailed, 400},
		{CodeUnauthorized, 401},
		{CodeUnauthorizedDevice, 401},
		{CodeEnrollmentNotFound, 404},
		{CodeConflict, 409},
		{CodePreconditionFailed, 412},
		{CodeThrottled, 429},
		{CodeServiceUnavailable, 503},
		{42, 500},     // not an Azure code
		{999999, 500}, // no such status
	}
	for _, tc := range tests {
		if got := (&Error{ErrorCode: tc.code}).Status(); got != tc.status {
			t.Errorf("Status of %d = %d, want %d", tc.code, got, tc.status)
		}
	}
}

func TestAsErrorHidesCauses(t *testing.T) {
	wrapped := fmt.Errorf("context: %w", Errorf(CodeConflict, "exists"))
	if e := AsError(wrapped); e.ErrorCode != CodeConflict {
		t.Errorf("wrapped dps error lost: %+v", e)
	}
	e := AsError(errors.New("database password is hunter2"))
	if e.ErrorCode != CodeInternal || e.Message != "Internal server error." {
		t.Errorf("plain error became %+v", e)
	}
}

func TestTerminal(t *testing.T) {
	for status, want := range map[string]bool{StatusAssigned: true, StatusFailed: true, StatusDisabled: true, StatusAssigning: false, StatusUnassigned: false} {
		if Terminal(status) != want {
			t.Errorf("Terminal(%q) != %v", status, want)
		}
	}
}
