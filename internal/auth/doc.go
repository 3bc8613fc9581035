// Package auth is the one home of how parry decides who is calling and
// whether they may: bearer tokens checked by the API server's TokenReview
// for an audience (or, without a cluster, against a local token file),
// SubjectAccessReview on parry's virtual resources, brief caches of both so
// hot paths stay fast, and the HTTP middleware that applies them.
//
// Failures are closed: a token that cannot be reviewed (the API server is
// unreachable) is not accepted; the caller gets 503 naming the cause, so a
// retrying client (a step, the broker) tries again, and the Stats count it.
package auth
