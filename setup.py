from setuptools import find_packages, setup


def version():
    # Read the literal from the package without importing it (it is not installed yet).
    with open("gmta/__init__.py", encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("no __version__ in gmta/__init__.py")


setup(
    name="gmta",
    version=version(),
    description="A mail transfer agent in Python on gevent, configured like maddy",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["gmta", "gmta.*"]),
    install_requires=[
        "gevent>=22.10",
        "dnspython>=2.3",
        # Argon2id (auth.pass_table) comes from cryptography >= 44 or, with
        # Debian 12's cryptography 38, from argon2-cffi.
        "cryptography>=38",
        "argon2-cffi>=21.1",
        "click>=8.1",
        # Sender authentication (DESIGN §1.1: the field's libraries): DKIM with
        # Ed25519 (PyNaCl), SPF, RFC 8601 fields, the public suffix list for DMARC.
        "dkimpy>=1.1",
        "pynacl>=1.5",
        "pyspf>=2.0.14",
        "authres>=1.2",
        "publicsuffixlist>=1.0",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6", "pytest-cov>=4",
                 "pytest-xdist>=3"],
    },
    entry_points={"console_scripts": ["gmta = gmta.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email :: Mail Transport Agents",
        "Framework :: gevent",
    ],
)
