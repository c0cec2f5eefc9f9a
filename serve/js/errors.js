// The one error type of the JavaScript samplers: bad input (model file, option, prime, constraint), shown as
// one line by the CLI and the page.

export class SamplerError extends Error {}
