"""mvp-jax: MVPTR (multi-stage vision-language pre-training) in JAX/Flax."""

import pathlib

import setuptools

ROOT = pathlib.Path(__file__).parent


def requirements(name):
  lines = (ROOT / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith(('#', '-r'))]


setuptools.setup(
    name='mvp-jax',
    version='0.1.0',
    description='MVPTR vision-language pre-training in JAX/Flax, with exact parity to the '
                'authors\' PyTorch model.',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['mvp_jax', 'mvp_jax.*', 'input_pipeline',
                                               'input_pipeline.*', 'configs']),
    package_data={'mvp_jax.vision': ['*.txt']},
    python_requires='>=3.10',
    install_requires=requirements('requirements.txt'),
    extras_require={'test': [r for r in requirements('requirements-test.txt')]},
    license='Apache-2.0',
)
