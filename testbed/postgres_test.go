package testbed

import (
	"strings"
	"testing"
	"time"
)

func TestPostgresTakesThePasswordFromTheBedOnly(t *testing.T) {
	b := Start(t, "db", "n1", "n2")
	ctx := t.Context()
	db := b.Host("db")
	start := time.Now()
	pg, err := db.StartPostgres(ctx, PostgresOptions{Password: "pw with 'quote' & $dollar"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("postgres up in %v", time.Since(start).Round(time.Millisecond))

	wantURL := "postgres://chat:pw%20with%20%27quote%27%20&%20$dollar@" + db.Addr.String() + ":5432/chat"
	if got := pg.URL(); got != wantURL {
		t.Errorf("URL: got %s, want %s", got, wantURL)
	}
	got, err := pg.Query(ctx, "SELECT current_user, current_database();\nSELECT rolsuper, rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'chat'")
	if err != nil {
		t.Fatal(err)
	}
	if want := "postgres|chat\nf|t"; got != want {
		t.Errorf("as superuser: got %q, want %q (the app's role no superuser, its password kept as SCRAM)", got, want)
	}
	// TCP on the bed address only, besides the host's sshd.
	listening, err := db.Sh(ctx, "ss -Hltn | awk '{print $4}' | sort")
	if err != nil {
		t.Fatal(err)
	}
	if want := db.Addr.String() + ":22\n" + db.Addr.String() + ":5432\n"; listening != want {
		t.Errorf("db listens on\n%swant\n%s", listening, want)
	}

	// n2 reaches db from an address outside the bed's subnet: db routes the
	// answers back, so only pg_hba.conf stands in the way.
	const outside = "192.0.2.7"
	if _, err := b.Host("n2").Sh(ctx, "ip addr add "+outside+"/32 dev eth0 && ip route add "+db.Addr.String()+"/32 dev eth0 src "+outside); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Sh(ctx, "ip route add "+outside+"/32 dev eth0"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, from, password string
		wantOut, wantErr     string
	}{
		{"the password from the subnet", "n1", pg.Password, "chat chat", ""},
		{"a wrong password", "n1", "not-it", "", `password authentication failed for user "chat"`},
		{"from outside the subnet", "n2", pg.Password, "", `no pg_hba.conf entry for host "` + outside + `"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := "PGPASSWORD=" + shellQuote(tc.password) + " PGCONNECT_TIMEOUT=5 " + postgresBin + "/psql -X -A -t -h " + db.Addr.String() +
				" -p 5432 -U chat -d chat -c 'SELECT current_user || $$ $$ || current_database()'"
			out, err := b.Host(tc.from).Sh(ctx, script)
			if tc.wantErr == "" {
				if err != nil || strings.TrimSpace(out) != tc.wantOut {
					t.Fatalf("got %q, %v; want %q", out, err, tc.wantOut)
				}
				return
			}
			if err == nil || !strings.Contains(out, tc.wantErr) {
				t.Fatalf("got %q, %v; want a refusal saying %q", out, err, tc.wantErr)
			}
		})
	}

	// The app's database survives a restart; Stop really stops it.
	if _, err := pg.Query(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := pg.Query(ctx, "SELECT 1"); err == nil {
		t.Fatalf("a query after Stop answered %q", out)
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := pg.Query(ctx, "SELECT x FROM kept"); err != nil || got != "42" {
		t.Fatalf("after a restart: got %q, %v; want 42", got, err)
	}
}
