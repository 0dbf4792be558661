/*
 * A strict, bounded reader for the one CMS shape Mdm-Signature uses: a
 * detached SignedData over id-data with one signer whose certificate is
 * embedded.  It only finds where things are (slices of the input, never
 * copied); ngx_http_mdm_verify.c does the cryptography.
 *
 * Encoding rules: definite lengths in minimal form everywhere, except
 * that the constructed envelope elements (ContentInfo, its [0],
 * SignedData, digestAlgorithms, encapContentInfo, certificates,
 * signerInfos, SignerInfo) may use the indefinite form, as devices'
 * streaming CMS encoders do.  Certificates and signed attributes, whose
 * bytes are hashed, must be definite.  Nesting is bounded, every length
 * is checked against the enclosing element, and nothing may follow the
 * ContentInfo.
 *
 * Plain C, no OpenSSL or nginx types, so it can be fuzzed on its own.
 */

#ifndef _NGX_HTTP_MDM_CMS_H_INCLUDED_
#define _NGX_HTTP_MDM_CMS_H_INCLUDED_


#include <stddef.h>


#define MDM_CMS_MAX_CERTS    16
#define MDM_CMS_MAX_SIGNERS  8
#define MDM_CMS_MAX_DEPTH    8


/* digest algorithms (digestAlgorithm of the SignerInfo) */
enum {
    MDM_CMS_MD_UNKNOWN = 0,
    MDM_CMS_MD_SHA1,
    MDM_CMS_MD_SHA224,
    MDM_CMS_MD_SHA256,
    MDM_CMS_MD_SHA384,
    MDM_CMS_MD_SHA512,
    MDM_CMS_MD_N
};

/* key type the signatureAlgorithm names */
enum {
    MDM_CMS_SIG_UNKNOWN = 0,
    MDM_CMS_SIG_RSA,           /* rsaEncryption, shaNWithRSAEncryption */
    MDM_CMS_SIG_ECDSA          /* id-ecPublicKey, ecdsa-with-SHAn */
};


typedef struct {
    const unsigned char  *data;
    size_t                len;
} mdm_cms_slice_t;


typedef struct {
    int               version;
    int               sid_ski;          /* 1: subjectKeyIdentifier */
    mdm_cms_slice_t   issuer;           /* Name TLV (issuerAndSerial) */
    mdm_cms_slice_t   serial;           /* INTEGER TLV (issuerAndSerial) */
    mdm_cms_slice_t   ski;              /* key id octets */
    int               md;               /* MDM_CMS_MD_* */
    int               sig;              /* MDM_CMS_SIG_* */
    mdm_cms_slice_t   signed_attrs;     /* [0] TLV, len 0 when absent */
    mdm_cms_slice_t   message_digest;   /* octets of the attribute */
    mdm_cms_slice_t   signing_time;     /* UTCTime/GeneralizedTime TLV */
    mdm_cms_slice_t   signature;        /* octets */
} mdm_cms_signer_t;


typedef struct {
    int               version;
    int               detached;         /* no eContent */
    int               ncerts;
    mdm_cms_slice_t   certs[MDM_CMS_MAX_CERTS];    /* Certificate TLVs */
    int               nsigners;
    mdm_cms_signer_t  signer;           /* the first SignerInfo */
} mdm_cms_t;


/*
 * Reads a ContentInfo holding a SignedData.  Returns 0 on success, -1 with
 * *reason set ("signature is not CMS", "signature is not CMS SignedData",
 * "trailing data after signature", or a more precise one).  Success says
 * the structure is well formed and that the signed attributes, if any,
 * have exactly one content-type (id-data) and one message-digest and at
 * most one signing-time; the caller checks detached, nsigners, md, sig.
 */
int mdm_cms_parse(const unsigned char *der, size_t len, mdm_cms_t *cms,
    const char **reason);

/*
 * The signer's identifiers of a Certificate TLV: issuer Name TLV, serial
 * INTEGER TLV and (when the extension is there, else len 0) the
 * subjectKeyIdentifier octets.  Returns 0, or -1 if it is not a
 * certificate this reader understands.
 */
int mdm_cms_cert_ids(const unsigned char *der, size_t len,
    mdm_cms_slice_t *issuer, mdm_cms_slice_t *serial, mdm_cms_slice_t *ski);

/* Index in cms->certs of the certificate the signer names, or -1. */
int mdm_cms_find_signer(const mdm_cms_t *cms);


#endif /* _NGX_HTTP_MDM_CMS_H_INCLUDED_ */
