package node

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// IdentityFile is the name of the key file inside a data directory.
const IdentityFile = "identity.key"

// ErrIdentity wraps every failure to read or create a site's identity: a
// data directory that cannot be created or read, a corrupt key file.
var ErrIdentity = errors.New("node: identity")

// LoadIdentity returns the site's private key from dir, creating dir and an
// Ed25519 key the first time. The key file is written atomically, mode 0600,
// so the peer id survives restarts and a crash never leaves half a key.
func LoadIdentity(dir string) (crypto.PrivKey, peer.ID, error) {
	path := filepath.Join(dir, IdentityFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err := crypto.UnmarshalPrivateKey(data)
		if err != nil {
			return nil, "", fmt.Errorf("%w %s: %w", ErrIdentity, path, err)
		}
		id, err := peer.IDFromPrivateKey(key)
		return key, id, err
	case !errors.Is(err, fs.ErrNotExist):
		return nil, "", fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("%w: data directory: %w", ErrIdentity, err)
	}
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("%w: generate: %w", ErrIdentity, err)
	}
	data, err = crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, "", fmt.Errorf("%w: marshal: %w", ErrIdentity, err)
	}
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	id, err := peer.IDFromPrivateKey(key)
	return key, id, err
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
