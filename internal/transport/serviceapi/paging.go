package serviceapi

import (
	"encoding/base64"
	"strconv"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
)

// Query page sizes. Azure documents neither; 100 matches the store's
// default page and 1000 keeps one response to a few megabytes at most.
// A larger x-ms-max-item-count is capped, not refused, because the Azure
// CLI sends its "--top" value there and loops on the continuation.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// pageSize reads x-ms-max-item-count: absent, zero or negative means the
// default, larger than MaxPageSize is capped, not a number is a 400.
func pageSize(req *request) (int, error) {
	v := strings.TrimSpace(req.r.Header.Get(dps.HeaderMaxItemCount))
	if v == "" {
		return DefaultPageSize, nil
	}
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		return 0, dps.Errorf(dps.CodeBadRequest, "The %s header must be a whole number, not %q.", dps.HeaderMaxItemCount, v)
	case n <= 0:
		return DefaultPageSize, nil
	case n > MaxPageSize:
		return MaxPageSize, nil
	}
	return n, nil
}

// continuationVersion starts every token so the format can change later.
const continuationVersion = "c1"

// encodeContinuation makes the opaque x-ms-continuation token for the page
// after id in scope (the collection queried, so a token from one query
// cannot be replayed against another). It is never empty: npm treats any
// present header as "more results", so an empty one would loop forever.
func encodeContinuation(scope, afterID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(continuationVersion + "\n" + scope + "\n" + afterID))
}

// decodeContinuation returns the id a continuation token continues after;
// "" when token is empty (the first page).
func decodeContinuation(scope, token string) (string, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return "", nil
	}
	bad := dps.Errorf(dps.CodeBadRequest, "The %s token is not valid for this query.", dps.HeaderContinuation)
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(token, "="))
	if err != nil {
		return "", bad
	}
	parts := strings.SplitN(string(raw), "\n", 3)
	if len(parts) != 3 || parts[0] != continuationVersion || parts[1] != scope || parts[2] == "" {
		return "", bad
	}
	return parts[2], nil
}
