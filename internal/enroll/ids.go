package enroll

import (
	"strings"

	"github.com/dpsd/dpsd/api/dps"
)

// MaxIDLength is the longest registration or enrollment group id Azure accepts.
const MaxIDLength = 128

// ValidateID checks a registration id or enrollment group id against Azure's
// rules: 1–128 characters, ASCII letters and digits plus '-', '.', '_' and
// ':', ending in a letter, digit or '-'. what names the id in the message
// ("registrationId", "enrollmentGroupId"). Ids compare case-insensitively;
// this function does not care about case.
func ValidateID(what, id string) error {
	switch {
	case id == "":
		return dps.Errorf(dps.CodeInvalidArgument, "The %s is missing.", what)
	case len(id) > MaxIDLength:
		return dps.Errorf(dps.CodeInvalidArgument, "The %s is longer than %d characters.", what, MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && !strings.ContainsRune("-._:", rune(c)) {
			return dps.Errorf(dps.CodeInvalidArgument, "The %s %q contains %q; only letters, digits and '-', '.', '_', ':' are allowed.", what, id, rune(c))
		}
	}
	if last := id[len(id)-1]; !isAlnum(last) && last != '-' {
		return dps.Errorf(dps.CodeInvalidArgument, "The %s %q must end with a letter, a digit or '-'.", what, id)
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// validateDeviceID applies IoT Hub's device id rules: up to 128 ASCII
// letters, digits and "-.+%_#*?!(),:=@$'". The hub would refuse anything
// else at registration time, so refusing it here saves a failed
// registration.
func validateDeviceID(id string) error {
	if len(id) > MaxIDLength {
		return dps.Errorf(dps.CodeInvalidArgument, "The deviceId is longer than %d characters.", MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && !strings.ContainsRune("-.+%_#*?!(),:=@$'", rune(c)) {
			return dps.Errorf(dps.CodeInvalidArgument, "The deviceId %q contains %q, which IoT Hub does not allow in device ids.", id, rune(c))
		}
	}
	return nil
}
