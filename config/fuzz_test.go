package config

import (
	"testing"
)

// FuzzDecode: any operator.yaml decodes, or is refused with an error; what
// decodes goes through defaults and validation without a panic.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("repo: git@github.com:acme/chat.git\nbranch: main\nenvironment: production\npoll: \"@every 1m\"\nssh:\n  known_hosts: /etc/operator/known_hosts\n"))
	f.Add([]byte("repo: [1, 2]\n"))
	f.Add([]byte("unknown: key\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		if err := decode("operator.yaml", data, &c); err != nil {
			return
		}
		c.fillDefaults()
		c.validate("operator.yaml")
	})
}
