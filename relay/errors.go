package relay

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// PGError is an error that reaches a client as an ErrorResponse, with the
// SQLSTATE a PostgreSQL server would use.
type PGError struct {
	Severity string // ERROR or FATAL
	Code     string // SQLSTATE
	Message  string
	Detail   string
	Hint     string
}

func (e *PGError) Error() string {
	return fmt.Sprintf("%s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code)
}

// Response is the ErrorResponse message for e.
func (e *PGError) Response() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
	}
}

func errorf(code, format string, args ...any) *PGError {
	return &PGError{Severity: "ERROR", Code: code, Message: fmt.Sprintf(format, args...)}
}

func fatalf(code, format string, args ...any) *PGError {
	return &PGError{Severity: "FATAL", Code: code, Message: fmt.Sprintf(format, args...)}
}
