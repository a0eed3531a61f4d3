package gitsrc

import (
	"bytes"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseSignature: any X-Hub-Signature-256 value is a 32-byte sum or
// refused.
func FuzzParseSignature(f *testing.F) {
	f.Add("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
	f.Add("sha1=0000")
	f.Add("sha256=")
	f.Fuzz(func(t *testing.T, h string) {
		if sum, ok := parseSignature(h); ok && len(sum) != 32 {
			t.Errorf("%q gave a sum of %d bytes", h, len(sum))
		}
	})
}

// FuzzWebhook sends the handler any body, signed with the secret (so that
// fuzzing reaches the payload's parsing, past the signature), under any
// event and content type: it answers with a status of its own and hands
// on only pushes of the tracked branch.
func FuzzWebhook(f *testing.F) {
	secret := []byte("It's a Secret to Everybody")
	if samples, err := filepath.Glob("../../shared/fixtures/github-webhooks/*.json"); err == nil {
		for _, s := range samples {
			if data, err := os.ReadFile(s); err == nil {
				f.Add(data, "push", "application/json")
			}
		}
	}
	f.Add([]byte(`{"ref":"refs/heads/main","after":"`+hex.EncodeToString(make([]byte, 20))+`","repository":{"full_name":"acme/chat"}}`), "push", "application/json")
	f.Add([]byte("payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D"), "push", "application/x-www-form-urlencoded")
	f.Add([]byte(`{"zen":"hi"}`), "ping", "application/json")
	f.Fuzz(func(t *testing.T, body []byte, event, contentType string) {
		var pushes []Push
		w, err := NewWebhook(WebhookOptions{Secret: secret, Repository: "acme/chat", Branch: "main", OnPush: func(p Push) { pushes = append(pushes, p) }})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, "/hooks/github", bytes.NewReader(body))
		req.Header.Set("X-GitHub-Event", event)
		req.Header.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac(secret, body)))
		rec := httptest.NewRecorder()
		w.ServeHTTP(rec, req)
		if rec.Code < 200 || rec.Code > 599 {
			t.Errorf("status %d", rec.Code)
		}
		if len(pushes) > 1 {
			t.Errorf("one delivery, %d pushes", len(pushes))
		}
		if len(pushes) == 1 && rec.Code/100 != 2 {
			t.Errorf("a push handed on, answered %d", rec.Code)
		}
	})
}
