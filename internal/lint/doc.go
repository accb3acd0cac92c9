// Package lint holds tests that keep the code base's shape; it has no code.
package lint
