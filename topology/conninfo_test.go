package topology

import "testing"

func TestRepointKeepsOtherKeywords(t *testing.T) {
	tests := []struct {
		name, cur, parent, want string
	}{
		{
			name:   "pg_basebackup -R style",
			cur:    `user=postgres passfile='/var/lib/pg/.pgpass' channel_binding=prefer host=10.0.0.1 port=5432 sslmode=prefer application_name=s1`,
			parent: "host=127.0.0.1 port=6001 sslmode=disable user=walrelay",
			want:   `host='127.0.0.1' port='6001' user='postgres' passfile='/var/lib/pg/.pgpass' channel_binding='prefer' sslmode='prefer' application_name='s1'`,
		},
		{
			name:   "quoted values with escapes and hostaddr replaced",
			cur:    `hostaddr=10.0.0.1 port = 5433 application_name='it\'s me' password='a b\\c'`,
			parent: "host=r2.example port=7000",
			want:   `host='r2.example' port='7000' application_name='it\'s me' password='a b\\c'`,
		},
		{
			name:   "multi-host fallback replaced by the assigned parent",
			cur:    "host=r1,r2 port=6001,6002 user=postgres",
			parent: "host=r3 port=6003",
			want:   `host='r3' port='6003' user='postgres'`,
		},
		{
			name:   "empty primary_conninfo",
			cur:    "",
			parent: "host=r1 port=6001",
			want:   `host='r1' port='6001'`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := repoint(tt.cur, tt.parent)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("repoint:\n got %s\nwant %s", got, tt.want)
			}
			// What we write must read back the same.
			ci, err := parseConninfo(got)
			if err != nil {
				t.Fatalf("reparse %s: %v", got, err)
			}
			if ci.String() != got {
				t.Fatalf("round trip: %s != %s", ci.String(), got)
			}
			if !sameEndpoint(got, tt.parent) {
				t.Fatalf("sameEndpoint(%s, %s) = false", got, tt.parent)
			}
		})
	}
}

func TestConninfoErrors(t *testing.T) {
	for _, bad := range []string{"host", "host=x port", "application_name='open", "postgresql://u@h/db"} {
		if _, err := parseConninfo(bad); err == nil {
			t.Errorf("parseConninfo(%q): no error", bad)
		}
	}
	if sameEndpoint("host=a port=1", "host=a port=2") || !sameEndpoint("host=a", "host=a port=5432") {
		t.Error("sameEndpoint: port defaults wrong")
	}
}
