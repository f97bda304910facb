package enroll

import "strings"

// EnrollmentETag renders a store etag the way Azure shows the etag of an
// enrollment or group: the value wrapped in double quotes, so the JSON
// member reads "\"abc\"". The same string is a valid HTTP ETag header.
func EnrollmentETag(storeETag string) string {
	return `"` + storeETag + `"`
}

// NormalizeETag reduces an If-Match value or an etag member to the bare
// store etag: it drops a weak "W/" prefix and any surrounding double quotes
// or backslashes. Clients differ here — the npm client sends the quoted JSON
// value, the C# v1 client adds quotes when missing, the C# v2 preview doubles
// them — and all of them must match. "*" stays "*"; "" stays "".
func NormalizeETag(v string) string {
	v = strings.TrimSpace(v)
	v = strings.TrimPrefix(v, "W/")
	return strings.Trim(v, "\"\\ ")
}

// ETagMatch reports whether an If-Match value matches a stored etag, either
// as "*" or as the same etag in any of the forms NormalizeETag accepts.
func ETagMatch(storeETag, ifMatch string) bool {
	v := NormalizeETag(ifMatch)
	return v == "*" || (v != "" && v == NormalizeETag(storeETag))
}
