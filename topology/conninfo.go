package topology

import (
	"fmt"
	"strings"
)

// conninfo is a libpq keyword/value connection string kept in its original
// order, so a standby's primary_conninfo can be re-pointed at a new parent
// without losing its other keywords (user, application_name, sslmode,
// passfile, keepalives...).
type conninfo struct {
	keys []string
	vals map[string]string
}

// parseConninfo reads the keyword/value form libpq documents: key = value
// pairs separated by white space, values optionally single-quoted with
// backslash escapes. URIs (postgresql://...) are refused: rewriting them
// keyword by keyword would be guesswork.
func parseConninfo(s string) (*conninfo, error) {
	ci := &conninfo{vals: map[string]string{}}
	trimmed := strings.TrimSpace(s)
	if strings.HasPrefix(trimmed, "postgresql://") || strings.HasPrefix(trimmed, "postgres://") {
		return nil, fmt.Errorf("conninfo %q: URI form is not supported here; use key=value pairs", s)
	}
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	for {
		skip()
		if i >= len(s) {
			return ci, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' {
			i++
		}
		key := s[start:i]
		skip()
		if i >= len(s) || s[i] != '=' || key == "" {
			return nil, fmt.Errorf("conninfo %q: missing \"=\" after %q", s, key)
		}
		i++
		skip()
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				if c == '\'' {
					i++
					closed = true
					break
				}
				val.WriteByte(c)
				i++
			}
			if !closed {
				return nil, fmt.Errorf("conninfo %q: unterminated quoted string", s)
			}
		} else {
			for i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		ci.set(key, val.String())
	}
}

func (c *conninfo) get(key string) string { return c.vals[key] }

func (c *conninfo) set(key, val string) {
	if _, ok := c.vals[key]; !ok {
		c.keys = append(c.keys, key)
	}
	c.vals[key] = val
}

func (c *conninfo) del(key string) {
	if _, ok := c.vals[key]; !ok {
		return
	}
	delete(c.vals, key)
	for i, k := range c.keys {
		if k == key {
			c.keys = append(c.keys[:i], c.keys[i+1:]...)
			break
		}
	}
}

// String writes every value quoted, as pg_basebackup -R does.
func (c *conninfo) String() string {
	var b strings.Builder
	for i, k := range c.keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		v := strings.ReplaceAll(c.vals[k], `\`, `\\`)
		v = strings.ReplaceAll(v, `'`, `\'`)
		fmt.Fprintf(&b, "%s='%s'", k, v)
	}
	return b.String()
}

// endpoint is the host:port a conninfo points at ("" host means libpq's
// default, which a manager cannot know; port defaults to 5432).
func (c *conninfo) endpoint() string {
	host := c.get("host")
	if host == "" {
		host = c.get("hostaddr")
	}
	port := c.get("port")
	if port == "" {
		port = "5432"
	}
	return host + ":" + port
}

// repoint returns primary_conninfo cur aimed at parent's host and port, with
// every other keyword of cur kept.
func repoint(cur, parent string) (string, error) {
	c, err := parseConninfo(cur)
	if err != nil {
		return "", fmt.Errorf("standby's primary_conninfo: %w", err)
	}
	p, err := parseConninfo(parent)
	if err != nil {
		return "", fmt.Errorf("parent's conninfo: %w", err)
	}
	for _, k := range []string{"host", "hostaddr", "port"} {
		c.del(k)
	}
	// Location first, where people look for it.
	var loc []string
	for _, k := range []string{"host", "hostaddr", "port"} {
		if v := p.get(k); v != "" {
			loc = append(loc, k)
			c.vals[k] = v
		}
	}
	c.keys = append(loc, c.keys...)
	return c.String(), nil
}

// sameEndpoint tells whether a standby's primary_conninfo already points at
// parent.
func sameEndpoint(cur, parent string) bool {
	c, err := parseConninfo(cur)
	if err != nil {
		return false
	}
	p, err := parseConninfo(parent)
	if err != nil {
		return false
	}
	return c.endpoint() == p.endpoint()
}

// Endpoint is the host:port a keyword/value connection string points at, or
// "" when it cannot be read.
func Endpoint(conninfo string) string {
	c, err := parseConninfo(conninfo)
	if err != nil || (c.get("host") == "" && c.get("hostaddr") == "") {
		return ""
	}
	return c.endpoint()
}

// Redact returns a connection string with its password masked, for display.
func Redact(conninfo string) string {
	c, err := parseConninfo(conninfo)
	if err != nil {
		return "(unreadable connection string)"
	}
	if _, ok := c.vals["password"]; ok {
		c.vals["password"] = "****"
	}
	return c.String()
}
