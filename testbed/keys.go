package testbed

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// newKeyPair writes an unencrypted ed25519 key in OpenSSH format at path and
// its public half at path.pub, and returns the public key line.
func newKeyPair(path, comment string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " " + comment
	if err := os.WriteFile(path+".pub", []byte(line+"\n"), 0o644); err != nil {
		return "", err
	}
	return line, nil
}

func (b *Bed) writeClientKey() error {
	dir := filepath.Join(b.Dir, "client")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b.ClientKey = filepath.Join(dir, "id_ed25519")
	b.KnownHosts = filepath.Join(dir, "known_hosts")
	_, err := newKeyPair(b.ClientKey, "operator@testbed")
	return err
}

func (h *Host) writeHostKey() error {
	line, err := newKeyPair(filepath.Join(h.Dir, "ssh_host_ed25519_key"), "root@"+h.Name)
	if err != nil {
		return err
	}
	f := strings.Fields(line)
	h.HostKey = f[0] + " " + f[1]
	return nil
}

// RotateHostKey gives the host a new host key, as a reinstalled or
// impersonated server would have; known_hosts keeps the old one. It takes
// effect at the next StartSSHD.
func (h *Host) RotateHostKey() error {
	return h.writeHostKey()
}

func (b *Bed) writeKnownHosts() error {
	var sb strings.Builder
	for _, h := range b.hosts {
		fmt.Fprintf(&sb, "%s %s\n", h.Addr, h.HostKey)
	}
	return os.WriteFile(b.KnownHosts, []byte(sb.String()), 0o644)
}

// writeSSHConfig writes an ssh_config for people: `ssh -F <Dir>/ssh_config n1`.
func (b *Bed) writeSSHConfig() error {
	var sb strings.Builder
	for _, h := range b.hosts {
		fmt.Fprintf(&sb, "Host %s\n  HostName %s\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n\n",
			h.Name, h.Addr, b.ClientKey, b.KnownHosts)
	}
	return os.WriteFile(filepath.Join(b.Dir, "ssh_config"), []byte(sb.String()), 0o644)
}

func (h *Host) writeSSHDConfig() error {
	conf := fmt.Sprintf(`ListenAddress %s:22
HostKey %s
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
Subsystem sftp internal-sftp
MaxSessions 64
MaxStartups 100:30:200
LogLevel INFO
`, h.Addr, filepath.Join(h.Dir, "ssh_host_ed25519_key"))
	return os.WriteFile(filepath.Join(h.Dir, "sshd_config"), []byte(conf), 0o600)
}
