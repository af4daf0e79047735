"""Sigstore key pairs and signatures for the signed tests (a test helper).

keygen PREFIX PASSPHRASE
    PREFIX.pub: the public key (PEM, SubjectPublicKeyInfo, ECDSA P-256);
    PREFIX.pem: the private key, unencrypted PKCS#8 (for `sign`);
    PREFIX.key: the same key in cosign's encrypted format (PEM type
    ENCRYPTED COSIGN PRIVATE KEY: scrypt N=32768 r=8 p=1 over the
    passphrase, nacl/secretbox over the PKCS#8 DER), what skopeo's
    --sign-by-sigstore-private-key reads.
sign PREFIX REGISTRY REPO DIGEST IDENTITY OUT
    Push a sigstore signature of DIGEST naming IDENTITY as a registry
    attachment (tag sha256-<hex>.sig in REPO, one
    application/vnd.dev.cosign.simplesigning.v1+json layer holding the
    payload, the base64 ECDSA signature in its
    dev.cosignproject.cosign/signature annotation), over plain HTTP; the
    payload and the DER signature also go to OUT.payload and OUT.sig.

Debian's skopeo 1.9.3 can neither make nor check these (sigstore is
disabled in its build); the signed tests make them here to show that a
correct signature is still refused, and why.
"""
import base64, hashlib, json, os, sys, urllib.request
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

def keygen(prefix, passphrase):
    import nacl.secret
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt, nonce = os.urandom(32), os.urandom(24)
    box_key = hashlib.scrypt(passphrase.encode(), salt=salt, n=32768, r=8, p=1,
                             maxmem=64 << 20, dklen=32)
    sealed = nacl.secret.SecretBox(box_key).encrypt(der, nonce).ciphertext
    b64 = lambda b: base64.b64encode(b).decode()
    doc = {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64(salt)},
           "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
           "ciphertext": b64(sealed)}
    pem_type = "ENCRYPTED COSIGN PRIVATE KEY"
    body = base64.encodebytes(json.dumps(doc).encode()).decode()
    with open(prefix + ".key", "w") as f:
        f.write(f"-----BEGIN {pem_type}-----\n{body}-----END {pem_type}-----\n")
    with open(prefix + ".pem", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(prefix + ".pub", "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))

def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req) as resp:
        return resp.headers, resp.read()

def put_blob(base, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    hdrs, _ = request("POST", f"{base}/v2/{repo}/blobs/uploads/")
    loc = hdrs["Location"]
    if loc.startswith("/"):
        loc = base + loc
    sep = "&" if "?" in loc else "?"
    request("PUT", f"{loc}{sep}digest={digest}", data,
            {"Content-Type": "application/octet-stream"})
    return {"digest": digest, "size": len(data)}

def sign(prefix, registry, repo, digest, identity, out):
    with open(prefix + ".pem", "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": identity},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": {"creator": "bootc signed tests"},
    }).encode()
    sig = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    with open(out + ".payload", "wb") as f:
        f.write(payload)
    with open(out + ".sig", "wb") as f:
        f.write(sig)
    base = f"http://{registry}"
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **put_blob(base, repo, config)},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    **put_blob(base, repo, payload),
                    "annotations": {"dev.cosignproject.cosign/signature":
                                    base64.b64encode(sig).decode()}}],
    }
    tag = digest.replace(":", "-", 1) + ".sig"
    request("PUT", f"{base}/v2/{repo}/manifests/{tag}", json.dumps(manifest).encode(),
            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"keygen": keygen, "sign": sign}[cmd](*args)
