namespace Peft.Plugins.Lisa; public sealed class Placeholder {}
