// Package console is dpsd's web console: the pages an operator uses instead
// of the Azure portal, served by "dpsd serve" on its HTTPS listener under
// /console/.
//
// The pages are plain HTML, CSS and JavaScript modules embedded in the
// binary; nothing is built and nothing is fetched from elsewhere. The
// browser signs in with a service connection string or a policy name and
// key; the key stays on the server in the session, and every call the
// pages make is forwarded to the service API or dpsd's /dpsd/ endpoints
// with a SAS token of that policy. Those handlers therefore decide, as for
// any other client, what a session may read and change: the console adds
// no authorization of its own beyond the session, its CSRF token and its
// same-origin checks.
package console
