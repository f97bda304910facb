// Package console tests dpsd's web console in a real browser: Debian's
// Chromium, headless, driven over the DevTools protocol (chromedp) against
// a real "dpsd serve" with a built-in hub, and a device that provisions with
// dpsd's device client. Nothing downloads a browser: without Chromium the
// tests skip (or fail in CI).
package console
